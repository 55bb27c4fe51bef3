// Package audit writes the relay's tamper-evident record of the requests
// that ended (contract §F): one JSON line per request, each carrying the
// SHA-256 of the line before it, so that removing, reordering or editing a
// line breaks the chain at that point. It knows nothing of HTTP or of
// signing: its callers hand it finished entries, and wait until their line
// is written (and, with the default policy, on disk) before they let a
// signature out.
package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Sync says when written lines are forced to disk.
type Sync string

// The fsync policies.
const (
	// SyncAlways: a line is on disk before Append returns (lines written
	// at the same time share one fsync). The default.
	SyncAlways Sync = "always"
	// SyncInterval: lines are written at once and forced to disk every
	// second; a power failure can lose the last second.
	SyncInterval Sync = "interval"
	// SyncNever leaves it to the operating system.
	SyncNever Sync = "never"
)

// Entry is one ended request as the log records it. Seq, Time and Prev
// are filled in by the log.
type Entry struct {
	Seq           uint64 `json:"seq"`
	Time          string `json:"time"`
	RequestID     string `json:"request_id"`
	Requester     string `json:"requester"`
	PublicKey     string `json:"public_key"`
	MessageSHA256 string `json:"message_sha256"`
	Description   string `json:"description"`
	Code          string `json:"code"`
	Status        int    `json:"status"`
	Prev          string `json:"prev"`
}

// MessageDigest is the hex SHA-256 of a message, as an entry carries it
// (the message itself is never written).
func MessageDigest(msg []byte) string {
	sum := sha256.Sum256(msg)
	return hex.EncodeToString(sum[:])
}

// zeroHash is the prev of the first line.
var zeroHash = string(bytes.Repeat([]byte("0"), 64))

// ErrClosed: the log was closed.
var ErrClosed = errors.New("audit: the log is closed")

// Log appends entries to one file. It is safe for concurrent use.
type Log struct {
	f      *os.File
	policy Sync

	mu sync.Mutex
	// guards the following fields
	seq     uint64 // of the last line written
	prev    string // hex SHA-256 of the last line
	batch   []*waiter
	flusher bool // a goroutine is writing a batch (counted in flushing)
	closed  bool
	err     error // the first write error: every later Append fails (fail closed)

	flushing sync.WaitGroup
	stop     chan struct{}
	done     chan struct{}
}

type waiter struct {
	line []byte
	done chan error
}

// Open opens (or creates) path and continues its chain: the next line's
// seq follows the last line's, and its prev is the last line's hash. A
// file whose last line is not an entry is refused.
func Open(path string, policy Sync) (*Log, error) {
	switch policy {
	case "":
		policy = SyncAlways
	case SyncAlways, SyncInterval, SyncNever:
	default:
		return nil, fmt.Errorf("audit: unknown fsync policy %q (always, interval or never)", policy)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	l := &Log{f: f, policy: policy, prev: zeroHash, stop: make(chan struct{}), done: make(chan struct{})}
	last, err := lastLine(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("audit: %s: %w", path, err)
	}
	if last != nil {
		var e Entry
		if err := json.Unmarshal(last, &e); err != nil || e.Seq == 0 {
			f.Close()
			return nil, fmt.Errorf("audit: %s: the last line is not an audit entry; refusing to continue a chain that is broken (check it with signrelay audit verify)", path)
		}
		sum := sha256.Sum256(last)
		l.seq, l.prev = e.Seq, hex.EncodeToString(sum[:])
	}
	if policy == SyncInterval {
		go l.syncEvery(time.Second)
	} else {
		close(l.done)
	}
	return l, nil
}

// lastLine returns the file's last complete line (without "\n"), or nil
// for an empty file. A file that does not end in "\n" (a write cut off by
// a crash) is an error.
func lastLine(f *os.File) ([]byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if size == 0 {
		return nil, nil
	}
	const chunk = 64 << 10
	var tail []byte
	for off := size; off > 0 && bytes.Count(tail, []byte("\n")) < 2; {
		n := int64(chunk)
		if off < n {
			n = off
		}
		off -= n
		buf := make([]byte, n)
		if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		tail = append(buf, tail...)
		if off == 0 {
			break
		}
	}
	if tail[len(tail)-1] != '\n' {
		return nil, errors.New("the last line is incomplete (no newline at the end)")
	}
	tail = tail[:len(tail)-1]
	if i := bytes.LastIndexByte(tail, '\n'); i >= 0 {
		tail = tail[i+1:]
	}
	return tail, nil
}

// Append writes e as the next line and returns once it is written (and,
// with SyncAlways, on disk). After a write error every Append fails.
func (l *Log) Append(e Entry) error {
	w := &waiter{done: make(chan error, 1)}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	if l.err != nil {
		err := l.err
		l.mu.Unlock()
		return err
	}
	l.seq++
	e.Seq, e.Prev = l.seq, l.prev
	if e.Time == "" {
		e.Time = time.Now().UTC().Format(time.RFC3339Nano)
	}
	line, err := json.Marshal(e)
	if err != nil {
		l.seq--
		l.mu.Unlock()
		return err
	}
	sum := sha256.Sum256(line)
	l.prev = hex.EncodeToString(sum[:])
	w.line = append(line, '\n')
	l.batch = append(l.batch, w)
	if !l.flusher {
		l.flusher = true
		l.flushing.Add(1)
		go l.flush()
	}
	l.mu.Unlock()
	return <-w.done
}

// flush writes batches until none is waiting: lines that arrive while one
// batch is written go out together in the next, with one fsync.
func (l *Log) flush() {
	defer l.flushing.Done()
	for {
		l.mu.Lock()
		batch := l.batch
		l.batch = nil
		if len(batch) == 0 {
			l.flusher = false
			l.mu.Unlock()
			return
		}
		l.mu.Unlock()
		var buf bytes.Buffer
		for _, w := range batch {
			buf.Write(w.line)
		}
		_, err := l.f.Write(buf.Bytes())
		if err == nil && l.policy == SyncAlways {
			err = l.f.Sync()
		}
		if err != nil {
			err = fmt.Errorf("audit: writing the log: %w", err)
			l.mu.Lock()
			if l.err == nil {
				l.err = err
			}
			l.mu.Unlock()
		}
		for _, w := range batch {
			w.done <- err
		}
	}
}

func (l *Log) syncEvery(d time.Duration) {
	defer close(l.done)
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			_ = l.f.Sync()
		}
	}
}

// Close syncs and closes the file; Appends after it fail. Harmless twice.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	close(l.stop)
	<-l.done
	l.flushing.Wait() // lines already queued are written first
	err := l.f.Sync()
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Verify reads a log and checks its chain: every line an entry, seq
// 1, 2, 3, …, and each prev the SHA-256 of the line before (64 zeros for
// the first). It returns the number of lines, or an error naming the first
// line that breaks the chain.
func Verify(r io.Reader) (int, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	prev, n := zeroHash, 0
	for sc.Scan() {
		n++
		line := sc.Bytes()
		var e Entry
		if err := json.Unmarshal(line, &e); err != nil {
			return n - 1, fmt.Errorf("line %d: not a JSON entry: %v", n, err)
		}
		if e.Seq != uint64(n) {
			return n - 1, fmt.Errorf("line %d: seq is %d, want %d", n, e.Seq, n)
		}
		if e.Prev != prev {
			return n - 1, fmt.Errorf("line %d: prev does not match the hash of line %d: a line was changed, removed or inserted", n, n-1)
		}
		sum := sha256.Sum256(line)
		prev = hex.EncodeToString(sum[:])
	}
	if err := sc.Err(); err != nil {
		return n, fmt.Errorf("line %d: %w", n+1, err)
	}
	return n, nil
}

// Main runs "signrelay audit verify FILE": exit 0 with the line count when
// the chain is intact, 1 naming the first line that breaks it, 2 for bad
// usage.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) != 2 || args[0] != "verify" {
		fmt.Fprintln(stderr, "usage: signrelay audit verify FILE")
		return 2
	}
	f, err := os.Open(args[1])
	if err != nil {
		fmt.Fprintln(stderr, "signrelay audit:", err)
		return 1
	}
	defer f.Close()
	n, err := Verify(f)
	if err != nil {
		fmt.Fprintf(stderr, "%s: chain broken at %v (the %d lines before it are intact)\n", args[1], err, n)
		return 1
	}
	fmt.Fprintf(stdout, "%s: %d lines, chain intact\n", args[1], n)
	return 0
}
