package signing

import (
	"sync"
	"time"

	"github.com/google/uuid"
)

// Resources bounds the ended resources a node keeps: requests made with
// "wait": false or an Idempotency-Key stay readable (and replayable) for
// TTL after they end, and past MaxCount or MaxBytes the oldest go first.
// Pending resources are bounded by the Budget like every other request.
type Resources struct {
	TTL      time.Duration // default 1h
	MaxCount int           // default 100000
	MaxBytes int           // default 256 MiB
}

// resource is one request resource: pending (p set) or ended (rec set).
type resource struct {
	id      uuid.UUID
	owner   string
	idemKey string // "" when made without one
	fp      [32]byte
	p       *pending // while pending; nil for an entry ended before it was made
	rec     *Record  // once ended
	size    int
	expires time.Time // once ended: when it is forgotten
	next    *resource // the ended list, oldest first
}

type idemRef struct{ owner, key string }

// resources is the in-memory store of request resources on one node.
type resources struct {
	lim Resources

	mu sync.Mutex
	// guards the following fields and the rec, p, size, expires and next
	// fields of every resource
	byID       map[uuid.UUID]*resource
	byIdem     map[idemRef]*resource
	head, tail *resource // ended resources, in the order they ended
	count      int       // ended resources kept
	bytes      int
}

func newResources(lim Resources) *resources {
	if lim.TTL <= 0 {
		lim.TTL = time.Hour
	}
	if lim.MaxCount <= 0 {
		lim.MaxCount = 100000
	}
	if lim.MaxBytes <= 0 {
		lim.MaxBytes = 256 << 20
	}
	return &resources{lim: lim, byID: make(map[uuid.UUID]*resource), byIdem: make(map[idemRef]*resource)}
}

// claim returns the live resource that owner's idemKey names, or records
// r under it and returns nil: the first caller wins.
func (rs *resources) claim(r *resource) *resource {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.expireLocked(time.Now())
	ref := idemRef{r.owner, r.idemKey}
	if held := rs.byIdem[ref]; held != nil {
		return held
	}
	rs.byIdem[ref] = r
	rs.byID[r.id] = r
	return nil
}

// add records r, a resource made without an idempotency key.
func (rs *resources) add(r *resource) {
	rs.mu.Lock()
	rs.byID[r.id] = r
	rs.mu.Unlock()
}

// drop forgets r: its request was never made (it failed before, or ended
// as not connected), so a retry starts fresh.
func (rs *resources) drop(r *resource) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.byID[r.id] == r {
		delete(rs.byID, r.id)
	}
	if r.idemKey != "" && rs.byIdem[idemRef{r.owner, r.idemKey}] == r {
		delete(rs.byIdem, idemRef{r.owner, r.idemKey})
	}
}

// end records how r's request ended and keeps it for the TTL.
func (rs *resources) end(r *resource, rec *Record) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	now := time.Now()
	// The record is all that is kept: the request itself (its frame, its
	// recipients' connections) goes with it.
	r.rec, r.p, r.size, r.expires = rec, nil, recordBytes(rec), now.Add(rs.lim.TTL)
	if rs.byID[r.id] != r { // evicted or dropped meanwhile
		return
	}
	if rs.tail != nil {
		rs.tail.next = r
	} else {
		rs.head = r
	}
	rs.tail = r
	rs.count++
	rs.bytes += r.size
	rs.expireLocked(now)
	for rs.head != nil && (rs.count > rs.lim.MaxCount || rs.bytes > rs.lim.MaxBytes) {
		rs.popLocked()
	}
}

// expireLocked forgets the ended resources whose TTL has passed.
func (rs *resources) expireLocked(now time.Time) {
	for rs.head != nil && !now.Before(rs.head.expires) {
		rs.popLocked()
	}
}

func (rs *resources) popLocked() {
	r := rs.head
	rs.head = r.next
	if rs.head == nil {
		rs.tail = nil
	}
	r.next = nil
	rs.count--
	rs.bytes -= r.size
	if rs.byID[r.id] == r {
		delete(rs.byID, r.id)
	}
	if r.idemKey != "" && rs.byIdem[idemRef{r.owner, r.idemKey}] == r {
		delete(rs.byIdem, idemRef{r.owner, r.idemKey})
	}
}

// get returns the resource id of owner, or nil: to any other owner it
// does not exist.
func (rs *resources) get(owner string, id uuid.UUID) *resource {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.expireLocked(time.Now())
	r := rs.byID[id]
	if r == nil || r.owner != owner {
		return nil
	}
	return r
}

// state returns r's pending request, or its record once it ended.
func (rs *resources) state(r *resource) (*pending, *Record) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return r.p, r.rec
}

// kept reports the ended resources held and their bytes.
func (rs *resources) kept() (int, int) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.count, rs.bytes
}
