package httpapi

import (
	"net"
	"testing"
	"time"
)

// tcpPair is a connected loopback TCP pair: the relay's side and the peer's.
func tcpPair(t *testing.T) (relay, peer net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	peer, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	relay = <-accepted
	if relay == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { relay.Close(); peer.Close() })
	return relay, peer
}

// A request answered before the delay never starts a watch.
func TestDelayedWatchStoppedBeforeItStarts(t *testing.T) {
	relay, _ := tcpPair(t)
	w := startDelayedWatch(time.Hour, relay, func() { t.Error("gone called") })
	w.stop()
	w.start() // as if the timer had fired just as stop ran
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done || w.stopWatch != nil {
		t.Fatalf("done %v, watch started %v", w.done, w.stopWatch != nil)
	}
}

// Once the delay has passed, a backend that goes away is noticed, and
// stopping the watch afterwards is harmless.
func TestDelayedWatchSeesTheBackendGo(t *testing.T) {
	if !watchesSockets {
		t.Skip("no socket watch on this platform")
	}
	relay, peer := tcpPair(t)
	gone := make(chan struct{})
	w := startDelayedWatch(0, relay, func() { close(gone) })
	defer w.stop()
	peer.Close()
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatal("the closed backend was not noticed")
	}
}
