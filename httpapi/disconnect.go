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
	var mu sync.Mutex
	done := false
	var stopWatch func()
	t := time.AfterFunc(delay, func() {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			stopWatch = watchDisconnect(conn, gone)
		}
	})
	return func() {
		t.Stop()
		mu.Lock()
		done = true
		sw := stopWatch
		mu.Unlock()
		if sw != nil {
			sw()
		}
	}
}
