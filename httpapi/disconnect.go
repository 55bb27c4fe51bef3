package httpapi

import (
	"net"
	"sync"
	"time"
)

// watchDelay is how long a request waits before the relay starts watching
// its backend's socket. Automated key holders answer within milliseconds,
// and for them the watch (a goroutine, three deadline changes, a peek
// syscall, nine allocations) would be pure overhead; a request still
// pending after watchDelay is watched exactly as before.
const watchDelay = 20 * time.Millisecond

// watchDisconnectAfter is watchDisconnect started after delay, unless the
// returned stop is called first.
func watchDisconnectAfter(delay time.Duration, conn net.Conn, gone func()) (stop func()) {
	return startDelayedWatch(delay, conn, gone).stop
}

func startDelayedWatch(delay time.Duration, conn net.Conn, gone func()) *delayedWatch {
	w := &delayedWatch{conn: conn, gone: gone}
	w.timer = time.AfterFunc(delay, w.start)
	return w
}

// delayedWatch is one watchDisconnectAfter: a struct rather than closures
// over locals, because it is armed on every blocking request and each
// captured variable would be an allocation of its own.
type delayedWatch struct {
	conn  net.Conn
	gone  func()
	timer *time.Timer

	mu sync.Mutex
	// guards the following fields
	done      bool
	stopWatch func()
}

func (w *delayedWatch) start() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.stopWatch = watchDisconnect(w.conn, w.gone)
	}
}

func (w *delayedWatch) stop() {
	w.timer.Stop()
	w.mu.Lock()
	w.done = true
	sw := w.stopWatch
	w.mu.Unlock()
	if sw != nil {
		sw()
	}
}
