//go:build linux

package httpapi

import (
	"crypto/tls"
	"errors"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// watchDisconnect calls gone when the peer of conn closes or resets it while
// a handler is still working. fasthttp has no such signal, and a POST /sign
// may wait a minute for its answer, so we ask the kernel: wait until the
// socket is readable, then peek without consuming. EOF or an error means the
// backend went away; data means it pipelined a request, and from then on the
// TCP state is polled instead. stop ends the watch and hands the socket's
// read deadline back to fasthttp.
func watchDisconnect(conn net.Conn, gone func()) (stop func()) {
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	if tc, ok := conn.(*trackedConn); ok {
		conn = tc.Conn
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return func() {}
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return func() {}
	}
	if conn.SetReadDeadline(time.Time{}) != nil {
		return func() {}
	}
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var buf [1]byte
		dataWaiting := false
		err := rc.Read(func(fd uintptr) bool {
			n, _, err := unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			switch {
			case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
				return false
			case n > 0:
				dataWaiting = true
			default:
				gone()
			}
			return true
		})
		if err != nil || !dataWaiting {
			return
		}
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
			}
			if peerClosed(rc) {
				gone()
				return
			}
		}
	}()
	return func() {
		close(quit)
		_ = conn.SetReadDeadline(time.Unix(1, 0))
		<-done
		_ = conn.SetReadDeadline(time.Time{})
	}
}

func peerClosed(rc syscall.RawConn) bool {
	closed := false
	_ = rc.Control(func(fd uintptr) {
		info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			closed = true
			return
		}
		const tcpEstablished = 1
		closed = info.State != tcpEstablished
	})
	return closed
}

// watchesSockets: watchDisconnect sees a backend go away on this platform.
const watchesSockets = true
