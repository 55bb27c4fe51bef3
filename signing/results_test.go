package signing

import (
	"testing"
	"time"

	"github.com/google/uuid"
)

func endedResource(rs *resources, owner string, msg int) *resource {
	r := &resource{id: uuid.New(), owner: owner, idemKey: "k-" + uuid.NewString()}
	if rs.claim(r) != nil {
		panic("claimed twice")
	}
	rs.end(r, &Record{ID: r.id.String(), Owner: owner, Message: make([]byte, msg), Status: StatusSigned})
	return r
}

// The store of ended resources keeps its bounds: past the count or the
// bytes the oldest go first, and nothing outlives the TTL.
func TestResourcesBounds(t *testing.T) {
	rs := newResources(Resources{TTL: time.Hour, MaxCount: 3, MaxBytes: 1 << 20})
	var all []*resource
	for i := 0; i < 5; i++ {
		all = append(all, endedResource(rs, "o", 10))
	}
	if n, _ := rs.kept(); n != 3 {
		t.Fatalf("kept %d, want 3", n)
	}
	for i, r := range all {
		found := rs.get("o", r.id) != nil
		if found != (i >= 2) {
			t.Fatalf("resource %d found=%v: the oldest must go first", i, found)
		}
		if rs.get("other", r.id) != nil {
			t.Fatal("another owner sees the resource")
		}
	}
	if rs.claim(&resource{id: uuid.New(), owner: "o", idemKey: all[0].idemKey}) != nil {
		t.Fatal("an evicted idempotency key is still held")
	}

	big := newResources(Resources{TTL: time.Hour, MaxCount: 100, MaxBytes: 1 << 20})
	for i := 0; i < 8; i++ {
		endedResource(big, "o", 300<<10)
	}
	if n, b := big.kept(); b > 1<<20 || n != 3 {
		t.Fatalf("kept %d resources of %d bytes, want 3 within 1 MiB", n, b)
	}

	short := newResources(Resources{TTL: time.Nanosecond, MaxCount: 100, MaxBytes: 1 << 20})
	r := endedResource(short, "o", 1)
	if short.get("o", r.id) != nil {
		t.Fatal("a resource outlived its TTL")
	}
	if n, b := short.kept(); n != 0 || b != 0 {
		t.Fatalf("kept %d (%d bytes) after the TTL", n, b)
	}
}
