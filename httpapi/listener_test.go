package httpapi

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"
)

// scriptedListener returns the errors it is given, then real connections.
type scriptedListener struct {
	net.Listener
	errs []error
}

func (l *scriptedListener) Accept() (net.Conn, error) {
	if len(l.errs) > 0 {
		err := l.errs[0]
		l.errs = l.errs[1:]
		return nil, err
	}
	return l.Listener.Accept()
}

func loopback(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// acceptAll accepts on l until it fails, and then closes the channel.
func acceptAll(l net.Listener) <-chan net.Conn {
	accepted := make(chan net.Conn, 16)
	go func() {
		defer close(accepted)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	return accepted
}

// Running out of descriptors is what made the relay exit: it must be
// retried, like every error a client can cause, and never returned.
func TestAcceptRetriesTemporaryErrors(t *testing.T) {
	base := loopback(t)
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	l := newLimitListener(&scriptedListener{Listener: base, errs: []error{emfile, syscall.ENFILE, syscall.ECONNABORTED}}, 10, 0, nil, time.Second, slog.New(slog.DiscardHandler))
	client, err := net.Dial("tcp", base.Addr().String()) // waits in the backlog
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := l.Accept()
	if err != nil {
		t.Fatalf("Accept returned %v; temporary errors must be retried", err)
	}
	c.Close()

	base.Close()
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("closed listener: %v, want net.ErrClosed", err)
	}
}

// One connection over the cap is closed at once; closing one frees its
// place, and closing it twice frees it once.
func TestListenerCap(t *testing.T) {
	base := loopback(t)
	l := newLimitListener(base, 2, 0, nil, time.Second, slog.New(slog.DiscardHandler))
	dial := func() net.Conn {
		c, err := net.Dial("tcp", base.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	accepted := acceptAll(l)
	dial()
	dial()
	ca, cb := <-accepted, <-accepted
	// The kernel completes the handshake before the relay sees the
	// connection, so the refusal arrives as a reset, during or after dial.
	if over, err := net.Dial("tcp", base.Addr().String()); err == nil {
		defer over.Close()
		_ = over.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := over.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("a connection over the cap was not closed at once: %v", err)
		}
	}
	if l.Open() != 2 {
		t.Fatalf("open %d, want 2", l.Open())
	}
	ca.Close()
	ca.Close()
	if l.Open() != 1 {
		t.Fatalf("open %d after closing one twice, want 1", l.Open())
	}
	dial()
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("a freed place was not taken")
	}
	cb.Close()
	base.Close()
	for range accepted {
	}
}

// A connection that sends nothing meets the header deadline.
func TestFirstByteDeadline(t *testing.T) {
	base := loopback(t)
	l := newLimitListener(base, 10, 0, nil, 100*time.Millisecond, slog.New(slog.DiscardHandler))
	c, err := net.Dial("tcp", base.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Read(make([]byte, 1)); !isTimeout(err) {
		t.Fatalf("read %v, want a deadline", err)
	}
}

func TestHasBothLengths(t *testing.T) {
	for raw, want := range map[string]bool{
		"Host: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n": true,
		"transfer-encoding: chunked\r\ncontent-length: 5\r\n":            true,
		"Content-Length: 5\r\n":                                 false,
		"Transfer-Encoding: chunked\r\n":                        false,
		"X-Content-Length: 5\r\nTransfer-Encoding: chunked\r\n": false,
	} {
		if got := hasBothLengths([]byte(raw)); got != want {
			t.Errorf("%q: %v, want %v", raw, got, want)
		}
	}
}

// One address gets at most its share of the places; another address, and a
// trusted proxy, are not held back by it.
func TestListenerCapPerIP(t *testing.T) {
	base := loopback(t)
	proxy := netip.MustParsePrefix("127.0.0.3/32")
	l := newLimitListener(base, 100, 2, []netip.Prefix{proxy}, time.Second, slog.New(slog.DiscardHandler))
	accepted := acceptAll(l)
	from := func(ip string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		c, err := d.Dial("tcp", base.Addr().String())
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
		return c, err
	}
	refused := func(c net.Conn, err error) bool {
		if err != nil {
			return true
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		return err != nil && !isTimeout(err)
	}
	var mine []net.Conn
	for i := 0; i < 2; i++ {
		if _, err := from("127.0.0.1"); err != nil {
			t.Fatal(err)
		}
		mine = append(mine, <-accepted)
	}
	if !refused(from("127.0.0.1")) {
		t.Fatal("a third connection from one address was not refused")
	}
	for _, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.3", "127.0.0.3"} {
		if _, err := from(ip); err != nil {
			t.Fatalf("%s: %v", ip, err)
		}
		(<-accepted).Close()
	}
	mine[0].Close()
	if _, err := from("127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	(<-accepted).Close()
	mine[1].Close()
	base.Close()
	for c := range accepted {
		c.Close()
	}
}
