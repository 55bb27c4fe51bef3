package signing

import "sync"

// Budget bounds the requests pending on a node, so that no caller can make
// the relay hold more than the operator planned for: in all and per owner
// (API key), by count and by message bytes. A zero field is no bound.
type Budget struct {
	MaxPending              int
	MaxPendingBytes         int
	MaxPendingPerOwner      int
	MaxPendingBytesPerOwner int
}

// budget is what Budget allows, and what is in use.
type budget struct {
	lim Budget

	mu sync.Mutex
	// guards the following fields
	count, bytes int
	owners       map[string]*usage // only owners with something pending
}

type usage struct{ count, bytes int }

func newBudget(lim Budget) *budget {
	return &budget{lim: lim, owners: make(map[string]*usage)}
}

func over(limit, have, add int) bool { return limit > 0 && have+add > limit }

// take reserves one request of n message bytes for owner, or reports false
// when any bound would be passed.
func (b *budget) take(owner string, n int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	u := b.owners[owner]
	if u == nil {
		u = &usage{}
	}
	if over(b.lim.MaxPending, b.count, 1) || over(b.lim.MaxPendingBytes, b.bytes, n) ||
		over(b.lim.MaxPendingPerOwner, u.count, 1) || over(b.lim.MaxPendingBytesPerOwner, u.bytes, n) {
		return false
	}
	b.count++
	b.bytes += n
	u.count++
	u.bytes += n
	b.owners[owner] = u
	return true
}

// give returns what take reserved.
func (b *budget) give(owner string, n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.count--
	b.bytes -= n
	if u := b.owners[owner]; u != nil {
		u.count--
		u.bytes -= n
		if u.count == 0 {
			delete(b.owners, owner)
		}
	}
}
