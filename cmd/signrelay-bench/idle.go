package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type idleOptions struct {
	n       int           // introduced connections to open
	sources int           // loopback source addresses: 127.0.0.2 … 127.0.0.(1+sources)
	dialers int           // connections being opened at once
	settle  time.Duration // wait after the last introduction before reading RSS
	sweep   time.Duration // how often pending pings are answered
}

// idleConn is one introduced connection that is kept open without a
// goroutine or a buffer of its own: a sweeper reads it now and then,
// without blocking, to answer pings and notice a close.
type idleConn struct {
	c    *net.TCPConn
	rc   syscall.RawConn
	buf  []byte // an incomplete inbound frame, rarely non-nil
	dead bool
}

type idleSet struct {
	mu    sync.Mutex // guards conns' buf and dead, and serialises sweeps
	conns []*idleConn
	pongs int
	stop  chan struct{}
	done  chan struct{}
}

func (s *idleSet) n() int { return len(s.conns) }

// openIdle opens and introduces o.n connections, each holding its own key,
// and reports the relay's RSS growth per connection and the introduction
// rate. The connections stay open until close.
func openIdle(c common, o idleOptions) (*idleSet, error) {
	if o.n <= 0 {
		return nil, errors.New("idle: -n must be positive")
	}
	fmt.Printf("-- idle: opening %d introduced connections from %d source addresses (127.0.0.2…), %d at a time\n", o.n, o.sources, o.dialers)
	var rssBefore int64 = -1
	if c.pid > 0 {
		rssBefore, _ = procStatusKB(c.pid, "VmRSS")
	}
	selfRSSBefore, _ := procStatusKB(os.Getpid(), "VmRSS")
	dialers := make([]*net.Dialer, o.sources)
	for i := range dialers {
		ip := net.IPv4(127, 0, byte((2+i)>>8), byte(2+i))
		dialers[i] = &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: ip}}
	}

	set := &idleSet{conns: make([]*idleConn, 0, o.n), stop: make(chan struct{}), done: make(chan struct{})}
	var next atomic.Int64
	var failed atomic.Int64
	failures := map[string]int{}
	var fmu sync.Mutex
	var wg sync.WaitGroup
	before := sampleCPU(c.pid)
	lastProgress := time.Now()
	for w := 0; w < o.dialers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			seed := make([]byte, ed25519.SeedSize)
			for {
				i := next.Add(1) - 1
				if i >= int64(o.n) || failed.Load() > 100 {
					return
				}
				_, _ = rand.Read(seed)
				key := ed25519.NewKeyFromSeed(seed)
				ic, err := openOne(dialers[int(i)%len(dialers)], c.addr, key)
				if err != nil {
					failed.Add(1)
					fmu.Lock()
					failures[shortErr(err)]++
					fmu.Unlock()
					continue
				}
				set.mu.Lock()
				set.conns = append(set.conns, ic)
				if k := len(set.conns); k%5000 == 0 || time.Since(lastProgress) > 5*time.Second {
					lastProgress = time.Now()
					fmt.Fprintf(os.Stderr, "  … %d introduced\n", k)
				}
				set.mu.Unlock()
			}
		}()
	}
	wg.Wait()
	after := sampleCPU(c.pid)
	elapsed := after.at.Sub(before.at)
	ok := len(set.conns)
	go set.sweeper(o.sweep)

	report("introduced", "%d of %d in %.2f s: %.0f introductions/s", ok, o.n, elapsed.Seconds(), float64(ok)/elapsed.Seconds())
	report("failures", "%d; %s", failed.Load(), counts(failures))
	if ok > 0 && after.relay >= 0 && before.relay >= 0 {
		report("relay CPU", "%s per introduction (%.2f cores busy)", us((after.relay-before.relay)/time.Duration(ok)), (after.relay-before.relay).Seconds()/elapsed.Seconds())
	}
	report("generator CPU", "%s per introduction", us((after.self-before.self)/time.Duration(max(ok, 1))))
	time.Sleep(o.settle)
	if c.pid > 0 && rssBefore >= 0 {
		rssAfter, err := procStatusKB(c.pid, "VmRSS")
		if err == nil {
			growth := rssAfter - rssBefore
			report("relay VmRSS", "%d KiB before, %d KiB after %s settling: +%d KiB", rssBefore, rssAfter, o.settle, growth)
			if ok > 0 {
				report("relay RSS per connection", "%.0f bytes (%.2f KiB)", float64(growth*1024)/float64(ok), float64(growth)/float64(ok))
			}
		}
		report("relay open files", "%d", procFDs(c.pid))
	}
	if selfRSSAfter, err := procStatusKB(os.Getpid(), "VmRSS"); err == nil && ok > 0 {
		report("generator RSS per conn", "%.0f bytes", float64((selfRSSAfter-selfRSSBefore)*1024)/float64(ok))
	}
	if failed.Load() > 0 {
		return set, fmt.Errorf("idle: %d connections failed", failed.Load())
	}
	return set, nil
}

func shortErr(err error) string {
	s := err.Error()
	if len(s) > 60 {
		s = s[:60]
	}
	return fmt.Sprintf("%q", s)
}

func openOne(d *net.Dialer, addr string, key ed25519.PrivateKey) (*idleConn, error) {
	deadline := time.Now().Add(15 * time.Second)
	ws, err := wsDial(d, addr, "/ws", 512, deadline)
	if err != nil {
		return nil, err
	}
	if err := ws.introduce(key, deadline); err != nil {
		_ = ws.c.Close()
		return nil, err
	}
	tc := ws.c.(*net.TCPConn)
	rc, err := tc.SyscallConn()
	if err != nil {
		_ = tc.Close()
		return nil, err
	}
	ic := &idleConn{c: tc, rc: rc}
	if ws.rend > ws.rpos {
		ic.buf = append([]byte(nil), ws.rbuf[ws.rpos:ws.rend]...)
	}
	return ic, nil
}

// sweeper answers pings every interval until close.
func (s *idleSet) sweeper(every time.Duration) {
	defer close(s.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.sweep()
		}
	}
}

// sweep reads whatever each connection has received, without blocking:
// pings are answered, a close frame or EOF marks the connection dead. It
// returns how many connections are still open.
func (s *idleSet) sweep() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	tmp := make([]byte, 4096)
	rng := mrand.New(mrand.NewPCG(mrand.Uint64(), 1))
	alive := 0
	for _, ic := range s.conns {
		if ic.dead {
			continue
		}
		for {
			var n int
			var rerr error
			err := ic.rc.Read(func(fd uintptr) bool {
				n, rerr = syscall.Read(int(fd), tmp)
				return true
			})
			if err != nil || (rerr != nil && !errors.Is(rerr, syscall.EAGAIN) && !errors.Is(rerr, syscall.EINTR)) || (rerr == nil && n == 0) {
				ic.dead = true
				_ = ic.c.Close()
				break
			}
			if n <= 0 {
				break
			}
			ic.buf = append(ic.buf, tmp[:n]...)
			if !s.handleFrames(ic, rng) {
				break
			}
			if n < len(tmp) {
				break
			}
		}
		if !ic.dead {
			alive++
		}
	}
	return alive
}

// handleFrames consumes the complete frames in ic.buf; false when the
// connection is dead.
func (s *idleSet) handleFrames(ic *idleConn, rng *mrand.Rand) bool {
	b := ic.buf
	for len(b) >= 2 {
		hdr := frameHeaderLen(b[1])
		if len(b) < hdr {
			break
		}
		n := int(framePayloadLen(b) & (1<<31 - 1))
		if len(b) < hdr+n {
			break
		}
		switch b[0] & 0x0f {
		case opPing:
			_ = ic.c.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := ic.c.Write(appendFrame(nil, opPong, b[hdr:hdr+n], uint32(rng.Uint64()))); err != nil {
				ic.dead = true
			}
			s.pongs++
		case opClose:
			ic.dead = true
		}
		b = b[hdr+n:]
	}
	if ic.dead {
		_ = ic.c.Close()
		ic.buf = nil
		return false
	}
	if len(b) == 0 {
		ic.buf = nil
	} else {
		ic.buf = append([]byte(nil), b...)
	}
	return true
}

// close stops the sweeper and closes every connection.
func (s *idleSet) close() {
	select {
	case <-s.stop:
		return
	default:
	}
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ic := range s.conns {
		if !ic.dead {
			_ = ic.c.Close()
			ic.dead = true
		}
	}
}

// runIdle is the idle mode on its own: open, hold, check, close.
func runIdle(c common, o idleOptions, hold time.Duration) error {
	limit := raiseFileLimit()
	fmt.Printf("== signrelay-bench idle: %d connections, held %s\n", o.n, hold)
	report("relay", "%s (pid %d)", c.addr, c.pid)
	report("open-file limit", "%d (this process needs about %d)", limit, o.n+16)
	set, err := openIdle(c, o)
	if set == nil {
		return err
	}
	defer set.close()
	if err != nil {
		return err
	}
	time.Sleep(hold)
	alive := set.sweep()
	report("still open", "%d of %d after holding %s (%d pings answered)", alive, set.n(), hold, set.pongs)
	if alive != set.n() {
		return fmt.Errorf("idle: %d connections were closed by the relay", set.n()-alive)
	}
	return nil
}
