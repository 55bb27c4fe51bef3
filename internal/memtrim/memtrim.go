// Package memtrim tightens the heap of a process that has gone quiet, and
// loosens it again when work comes back.
//
// A relay's memory is mostly idle connections, and they arrive in bursts:
// a deploy or a network blip reconnects every browser tab at once. With
// the default GOGC of 100 the heap may grow by as much as is live (heap,
// stacks and globals) before the collector runs, and the pages it frees
// stay with the process (Go's scavenger returns memory only above that
// goal). At 19,000 idle connections releasing them gives back about
// 0.8 KiB per connection, kept for garbage that an idle relay makes
// slowly, if at all.
//
// A Trimmer reads the runtime's own figures every second. When so little
// is allocated that a collection at the default GOGC would come less than
// once a minute, the process is quiet: the Trimmer lowers GOGC to
// Policy.QuietPercent and returns the free pages to the operating system
// once (debug.FreeOSMemory, one collection); from then on the runtime's
// scavenger keeps them near the lower goal. When the rate of allocation
// rises again it restores GOGC at once, so a busy relay runs as without
// it (after at most Every at the lower GOGC). The cost while quiet is a
// collection at most every QuietGap/2 × QuietPercent/100 (the process
// stays quiet up to twice the entering rate), plus one forced per quiet
// period, at most one per MinGap.
//
// Garbage that was live at the last collection cannot be told from live
// objects without another one; it is given back after the runtime's next
// collection (one at least every two minutes), when it shows as free.
//
// It does nothing when the operator chose the collector's settings
// (GOGC or GOMEMLIMIT in the environment).
package memtrim

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Policy says when a process is quiet and what is done then.
type Policy struct {
	// Every is how often the runtime's figures are read.
	Every time.Duration
	// QuietGap: the process is quiet while, at the last period's rate of
	// allocation, a collection at BusyPercent would come less often than
	// once in this long; busy again when more often than once in half of
	// it.
	QuietGap time.Duration
	// BusyPercent is the GOGC that QuietGap is measured at (the setting
	// in force when quiet begins is what is restored); QuietPercent is
	// the GOGC while quiet.
	BusyPercent, QuietPercent int
	// MinFree: less than this to give back (free memory, and garbage a
	// collection would free) is not worth a release.
	MinFree uint64
	// MinGap bounds how often memory is released.
	MinGap time.Duration
}

// Default is what the relay runs: quiet below a collection a minute,
// GOGC 25 while quiet, 100 (Go's default) while busy.
var Default = Policy{
	Every:        time.Second,
	QuietGap:     time.Minute,
	BusyPercent:  100,
	QuietPercent: 25,
	MinFree:      4 << 20,
	MinGap:       30 * time.Second,
}

// Sample is what the policy looks at, read from runtime/metrics.
type Sample struct {
	At        time.Time
	Free      uint64 // heap memory free and not yet returned to the OS
	Objects   uint64 // heap memory occupied by objects, dead ones not yet swept included
	Live      uint64 // the live heap as the last collection found it
	Scan      uint64 // what the pacer's goal grows with: Live, stacks and globals
	Allocated uint64 // bytes allocated since the process started
	Released  uint64 // heap memory returned to the OS
}

// Releasable is what a collection and a release would give back: the free
// memory, and the objects beyond the last collection's live heap (most of
// them garbage by now). An idle process that lowers GOGC does not collect
// until it allocates again, so free memory alone says too little.
func (s Sample) Releasable() uint64 {
	r := s.Free
	if s.Objects > s.Live {
		r += s.Objects - s.Live
	}
	return r
}

// Quiet reports whether the period from prev to cur was quiet; wasQuiet
// is the state before it (the two thresholds differ, so that a rate near
// one does not flip the state every second).
func (p Policy) Quiet(prev, cur Sample, wasQuiet bool) bool {
	if prev.At.IsZero() || !cur.At.After(prev.At) || cur.Scan == 0 {
		return wasQuiet
	}
	var rate float64 // bytes per second
	if cur.Allocated > prev.Allocated {
		rate = float64(cur.Allocated-prev.Allocated) / cur.At.Sub(prev.At).Seconds()
	}
	// At BusyPercent a collection comes after (live heap + stacks +
	// globals) × BusyPercent/100 bytes of allocation (the pacer's goal).
	budget := float64(cur.Scan) * float64(p.BusyPercent) / 100
	gap := p.QuietGap.Seconds()
	if wasQuiet {
		gap /= 2
	}
	return rate*gap < budget
}

// Trimmer applies a Policy to this process.
type Trimmer struct {
	policy Policy
	// onRelease is told how many bytes each release returned; may be nil.
	onRelease func(bytes uint64)

	// Owned by Run (or the caller of Check).
	quiet    bool
	restore  int  // the GOGC in force when the process became quiet
	released bool // since the process last became quiet
	prev     Sample
	last     time.Time // of the last release
	samples  []metrics.Sample
}

// New returns a Trimmer for policy; onRelease, if not nil, hears the bytes
// each release returned to the operating system (for a log line).
func New(policy Policy, onRelease func(bytes uint64)) *Trimmer {
	return &Trimmer{policy: policy, onRelease: onRelease, samples: []metrics.Sample{
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/gc/heap/live:bytes"},
		{Name: "/gc/heap/allocs:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
		{Name: "/gc/scan/stack:bytes"},
		{Name: "/gc/scan/globals:bytes"},
	}}
}

// Chosen reports whether the environment (getenv) sets the collector's
// settings, in which case a Trimmer must not run.
func Chosen(getenv func(string) string) bool {
	return getenv("GOGC") != "" || getenv("GOMEMLIMIT") != ""
}

// Run checks every policy.Every until ctx is done, then restores the GOGC
// it found.
func (t *Trimmer) Run(ctx context.Context) {
	tick := time.NewTicker(t.policy.Every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			if t.quiet {
				debug.SetGCPercent(t.restore)
				t.quiet = false
			}
			return
		case now := <-tick.C:
			t.Check(now)
		}
	}
}

// Check reads the runtime's figures at now and moves between the busy and
// the quiet state; it reports whether the process is quiet.
func (t *Trimmer) Check(now time.Time) bool {
	cur := t.read(now)
	quiet := t.policy.Quiet(t.prev, cur, t.quiet)
	t.prev = cur
	switch {
	case quiet && !t.quiet:
		t.restore = debug.SetGCPercent(t.policy.QuietPercent)
		t.released = false
	case !quiet && t.quiet:
		debug.SetGCPercent(t.restore)
	}
	t.quiet = quiet
	if quiet && !t.released && cur.Releasable() >= t.policy.MinFree && (t.last.IsZero() || now.Sub(t.last) >= t.policy.MinGap) {
		start := time.Now()
		debug.FreeOSMemory()
		t.last, t.released = now, true
		// The collection's own work is not the process's allocation:
		// the next period starts after it.
		after := t.read(now.Add(time.Since(start)))
		t.prev = after
		if t.onRelease != nil && after.Released > cur.Released {
			t.onRelease(after.Released - cur.Released)
		}
	}
	return quiet
}

func (t *Trimmer) read(now time.Time) Sample {
	metrics.Read(t.samples)
	live := value(t.samples[2])
	return Sample{
		At: now, Free: value(t.samples[0]), Objects: value(t.samples[1]), Live: live,
		Scan:      live + value(t.samples[5]) + value(t.samples[6]),
		Allocated: value(t.samples[3]), Released: value(t.samples[4]),
	}
}

func value(s metrics.Sample) uint64 {
	if s.Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s.Value.Uint64()
}
