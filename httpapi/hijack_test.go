package httpapi

import (
	"net"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// readsFromSocket must recognise the pinned fasthttp's hijacked connection
// both ways: straight from the socket for a client that waited, through
// fasthttp's buffer for one that sent bytes early. If a fasthttp upgrade
// changes hijackConn, this fails (and the relay falls back safely to
// handler-bound connections meanwhile).
func TestHijackedConnReadsFromSocket(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan bool, 1)
	srv := &fasthttp.Server{
		ReduceMemoryUsage: true,
		KeepHijackedConns: true,
		Handler: func(ctx *fasthttp.RequestCtx) {
			ctx.Hijack(func(c net.Conn) {
				got <- readsFromSocket(c)
				_ = c.Close()
			})
		},
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown() })

	const req = "GET /ws HTTP/1.1\r\nHost: relay\r\n\r\n"
	for _, tc := range []struct {
		name  string
		extra string
		want  bool
	}{
		{"nothing after the request", "", true},
		{"bytes after the request", "early bytes", false},
	} {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte(req + tc.extra)); err != nil {
			t.Fatal(err)
		}
		select {
		case ok := <-got:
			if ok != tc.want {
				t.Errorf("%s: readsFromSocket %v, want %v", tc.name, ok, tc.want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: the hijack handler did not run", tc.name)
		}
		c.Close()
	}

	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if readsFromSocket(a) {
		t.Error("readsFromSocket(a net.Pipe end) is true; only fasthttp's hijackConn is recognised")
	}
}
