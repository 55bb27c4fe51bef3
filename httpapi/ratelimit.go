package httpapi

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/signrelay/signrelay/config"
)

// maxBuckets bounds the buckets one limiter keeps. Clients choose the keys
// (every IPv6 /64 is one), so without a bound an attacker could make the map
// grow with its request rate. A limiter that is full even after a sweep
// refuses new keys until buckets refill: it fails closed, for everyone new,
// which a flood of that size deserves.
const maxBuckets = 100_000

// keyedLimiter is a token bucket per key (API key, public key, client IP).
// Buckets that have refilled are swept lazily, so memory stays bounded by
// the keys active in the last refill period, and at most maxBuckets.
type keyedLimiter struct {
	limit rate.Limit
	burst int
	every time.Duration // how often full buckets are swept
	max   int

	mu sync.Mutex
	// guards the following fields
	buckets   map[string]*rate.Limiter
	lastSweep time.Time
}

func newKeyedLimiter(l config.Limit) *keyedLimiter {
	refill := time.Duration(float64(l.Burst) / l.Rate * float64(time.Second))
	return &keyedLimiter{
		limit: rate.Limit(l.Rate), burst: l.Burst,
		every:   max(refill, time.Minute),
		max:     maxBuckets,
		buckets: make(map[string]*rate.Limiter),
	}
}

// allow takes one token for key. When none is left it returns how long until
// one is, rounded up to whole seconds for Retry-After.
func (k *keyedLimiter) allow(key string) (ok bool, retryAfter int) {
	if k == nil {
		return true, 0
	}
	now := time.Now()
	k.mu.Lock()
	defer k.mu.Unlock()
	b := k.buckets[key]
	// A full map is swept at most once a second: each sweep walks every
	// bucket under the lock, and new keys must not buy one each.
	if b == nil && (now.Sub(k.lastSweep) > k.every || (len(k.buckets) >= k.max && now.Sub(k.lastSweep) > time.Second)) {
		k.sweepLocked(now)
	}
	if b == nil && len(k.buckets) >= k.max {
		return false, max(1, int(math.Ceil(k.every.Seconds())))
	}
	if b == nil {
		b = rate.NewLimiter(k.limit, k.burst)
		k.buckets[key] = b
	}
	r := b.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, max(1, int(math.Ceil(d.Seconds())))
	}
	return true, 0
}

// sweepLocked drops the buckets that have refilled: they hold no state a
// new bucket would not have.
func (k *keyedLimiter) sweepLocked(now time.Time) {
	for key, b := range k.buckets {
		if b.TokensAt(now) >= float64(k.burst) {
			delete(k.buckets, key)
		}
	}
	k.lastSweep = now
}
