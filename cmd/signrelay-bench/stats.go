package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// measureVerify times ed25519.Verify of 32-byte messages in this process:
// rounds of perRound verifies, and returns the median and the fastest round
// per operation. It counts the CPU time of the thread that verifies (not
// wall time), so that other processes taking the core do not inflate it.
func measureVerify(rounds, perRound int) (median, fastest time.Duration) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	pub := key.Public().(ed25519.PublicKey)
	msgs := make([][]byte, perRound)
	sigs := make([][]byte, perRound)
	for i := range msgs {
		msgs[i] = make([]byte, 32)
		_, _ = rand.Read(msgs[i])
		sigs[i] = ed25519.Sign(key, msgs[i])
	}
	per := make([]time.Duration, rounds)
	for r := range per {
		start := threadCPU()
		for i := range msgs {
			if !ed25519.Verify(pub, msgs[i], sigs[i]) {
				panic("ed25519.Verify failed on a valid signature")
			}
		}
		per[r] = (threadCPU() - start) / time.Duration(perRound)
	}
	slices.Sort(per)
	return per[len(per)/2], per[0]
}

// threadCPU is the CPU time of the calling OS thread.
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		panic("clock_gettime(CLOCK_THREAD_CPUTIME_ID): " + err.Error())
	}
	return time.Duration(ts.Nano())
}

// percentile returns the nearest-rank percentile q (0..100) of sorted.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*q/100+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// ms formats a duration in milliseconds with three decimals.
func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond)) }

// us formats a duration in microseconds with one decimal.
func us(d time.Duration) string { return fmt.Sprintf("%.1f µs", float64(d)/float64(time.Microsecond)) }

// counts formats a map of counts as "k=v k=v", sorted by key; "none" if empty.
func counts[K comparable](m map[K]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := slices.Collect(maps.Keys(m))
	sort.Slice(keys, func(i, j int) bool { return fmt.Sprint(keys[i]) < fmt.Sprint(keys[j]) })
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%v=%d", k, m[k])
	}
	return b.String()
}

// report prints aligned "name: value" lines.
func report(name string, format string, args ...any) {
	fmt.Printf("%-26s %s\n", name+":", fmt.Sprintf(format, args...))
}
