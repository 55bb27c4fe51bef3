package memtrim

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestQuiet(t *testing.T) {
	p := Default
	t0 := time.Unix(1000, 0)
	at := func(sec int, scan, allocated uint64) Sample {
		return Sample{At: t0.Add(time.Duration(sec) * time.Second), Objects: 2 * scan, Scan: scan, Allocated: allocated}
	}
	const mib = 1 << 20
	for _, tc := range []struct {
		name      string
		prev, cur Sample
		was, want bool
	}{
		{"no previous sample", Sample{}, at(1, 60*mib, 0), false, false},
		{"no previous sample keeps the state", Sample{}, at(1, 60*mib, 0), true, true},
		// 60 MiB of live heap, stacks and globals: a collection at GOGC
		// 100 after 60 MiB more (the dead objects do not count).
		{"nothing allocated", at(0, 60*mib, 5*mib), at(1, 60*mib, 5*mib), false, true},
		{"under a collection a minute", at(0, 60*mib, 0), at(1, 60*mib, mib-1), false, true},
		{"a collection a minute", at(0, 60*mib, 0), at(1, 60*mib, mib), false, false},
		{"busy", at(0, 60*mib, 0), at(1, 60*mib, 50*mib), true, false},
		// Quiet stays quiet up to a collection every 30 s.
		{"quiet, still under two a minute", at(0, 60*mib, 0), at(1, 60*mib, 2*mib-1), true, true},
		{"quiet, two a minute", at(0, 60*mib, 0), at(1, 60*mib, 2*mib), true, false},
		{"the rate is per second", at(0, 60*mib, 0), at(4, 60*mib, 3*mib), false, true},
		{"time went backwards", at(5, 60*mib, 0), at(1, 60*mib, 0), false, false},
	} {
		if got := p.Quiet(tc.prev, tc.cur, tc.was); got != tc.want {
			t.Errorf("%s: Quiet = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestReleasable(t *testing.T) {
	for _, tc := range []struct {
		s    Sample
		want uint64
	}{
		{Sample{Free: 10, Objects: 100, Live: 60}, 50},
		{Sample{Free: 10, Objects: 50, Live: 60}, 10}, // grew since the last collection
		{Sample{}, 0},
	} {
		if got := tc.s.Releasable(); got != tc.want {
			t.Errorf("%+v: Releasable = %d, want %d", tc.s, got, tc.want)
		}
	}
}

var sink [][]byte

// gcPercent reads the collector's setting.
func gcPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

// The real runtime: garbage left by a burst is given back once the
// process is quiet, GOGC is lowered while quiet and the setting it found
// is restored at once when allocation comes back.
func TestTrimmerReleasesWhenQuietAndRestoresWhenBusy(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	var released []uint64
	tr := New(Default, func(n uint64) { released = append(released, n) })
	now := time.Now()

	// A burst: 64 MiB allocated, kept, then dropped, with no collection
	// since the one before it (as when the burst ends between two).
	runtime.GC()
	debug.SetGCPercent(-1)
	for i := 0; i < 64<<10; i++ {
		sink = append(sink, make([]byte, 1024))
	}
	sink = nil
	debug.SetGCPercent(80) // what it finds is what it restores
	tr.Check(now)
	if !tr.Check(now.Add(10 * time.Second)) {
		t.Fatal("not quiet after ten seconds of no allocation")
	}
	if p := gcPercent(); p != Default.QuietPercent {
		t.Fatalf("GOGC %d while quiet, want %d", p, Default.QuietPercent)
	}
	if len(released) != 1 || released[0] < 32<<20 {
		t.Fatalf("released %v bytes, want one release of at least 32 MiB", released)
	}
	// Quiet still: nothing more to release, and no collection forced.
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	gcs := ms.NumForcedGC
	if !tr.Check(now.Add(20 * time.Second)) {
		t.Fatal("not quiet any more")
	}
	runtime.ReadMemStats(&ms)
	if ms.NumForcedGC != gcs || len(released) != 1 {
		t.Fatalf("a second release in one quiet period (%d forced collections, releases %v)", ms.NumForcedGC-gcs, released)
	}

	// Busy: far more allocated in a second than the heap holds.
	for i := 0; i < 256<<10; i++ {
		sink = append(sink, make([]byte, 1024))
		if len(sink) > 1024 {
			sink = sink[:0]
		}
	}
	if tr.Check(now.Add(21 * time.Second)) {
		t.Fatal("quiet while allocating 256 MiB a second")
	}
	if p := gcPercent(); p != 80 {
		t.Fatalf("GOGC %d while busy, want the 80 it found", p)
	}
}

func TestChosen(t *testing.T) {
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	if Chosen(getenv) {
		t.Fatal("chosen with neither GOGC nor GOMEMLIMIT")
	}
	env["GOMEMLIMIT"] = "1GiB"
	if !Chosen(getenv) {
		t.Fatal("GOMEMLIMIT not seen")
	}
	delete(env, "GOMEMLIMIT")
	env["GOGC"] = "50"
	if !Chosen(getenv) {
		t.Fatal("GOGC not seen")
	}
}
