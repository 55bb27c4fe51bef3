//go:build linux

package tests

import "syscall"

// stuckMessageBytes is the message size that fills the socket of a key
// holder that never reads within a few requests (see stuckSocket).
const stuckMessageBytes = 16 << 10

// stuckSocket shrinks a client socket before it connects: a tiny receive
// buffer and maximum segment size keep the relay's send buffer for it (which
// the kernel sizes from the segment size) at some tens of KB instead of MBs,
// so that a holder that stops reading blocks the relay's writes after a few
// frames.
func stuckSocket(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048); serr == nil {
			serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG, 536)
		}
	})
	if err != nil {
		return err
	}
	return serr
}
