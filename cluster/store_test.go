package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/signrelay/signrelay/signing"
)

// threeStores opens the request store on three embedded servers routed
// together, with the bucket replicated on all three.
func threeStores(t *testing.T) []*Store {
	t.Helper()
	ports := []int{freePort(t), freePort(t), freePort(t)}
	stores := make([]*Store, 3)
	for i := range stores {
		cfg := embeddedConfig("127.0.0.1:0")
		e := &cfg.Cluster.Embedded
		e.ClusterListen = hostPort(ports[i])
		e.User, e.Password = "route-user", "s3cret"
		for _, p := range ports {
			e.Routes = append(e.Routes, "nats://"+hostPort(p))
		}
		e.StoreDir = t.TempDir()
		cfg.Cluster.NodeID = fmt.Sprintf("node-%d", i)
		l, err := Open(cfg, nil)
		// The route port was free when picked; another process may have
		// taken it since. The others learn a new one when this node
		// connects to them (routes are gossiped).
		for try := 0; err != nil && strings.Contains(err.Error(), "address already in use") && try < 3; try++ {
			e.ClusterListen = hostPort(freePort(t))
			l, err = Open(cfg, nil)
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		s, err := NewStore(l, StoreOptions{ResultTTL: time.Minute, MaxLife: time.Minute, MaxBytes: 64 << 20, Replicas: 3}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		stores[i] = s
	}
	// The first bucket opens once the JetStream cluster has its leader.
	deadline := time.Now().Add(40 * time.Second)
	for _, s := range stores {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), storeOp)
			err := s.open(ctx)
			cancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("request bucket not open: %v", err)
			}
			time.Sleep(100 * time.Millisecond) // polling a condition, bounded
		}
	}
	return stores
}

// §C on a cluster: identical retries racing on every node make one
// request. A replicated stream refuses a compare-and-set on a key whose
// first write is still being replicated, before that write can be read:
// every loser must still find the winner, not fail.
func TestConcurrentClaimsOfOneKey(t *testing.T) {
	stores := threeStores(t)
	const rounds, callers = 20, 12
	for r := 0; r < rounds; r++ {
		idem := fmt.Sprintf("race-%d", r)
		if r%2 == 1 {
			// A key used before and released (a call that failed
			// before its request was made): its delete marker is
			// written over, which a replicated stream refuses with
			// another code.
			now := time.Now()
			gone := &signing.Record{ID: uuid.NewString(), Owner: "backend", Created: now, Expires: now.Add(time.Minute), Status: signing.StatusPending, Async: true, IdemKey: idem}
			if _, err := stores[r%3].Claim(context.Background(), gone); err != nil {
				t.Fatalf("round %d: first claim: %v", r, err)
			}
			stores[r%3].Release(gone)
		}
		type result struct {
			id   string
			held *signing.Record
			err  error
		}
		results := make(chan result, callers)
		var wg sync.WaitGroup
		for c := 0; c < callers; c++ {
			wg.Add(1)
			go func(s *Store) {
				defer wg.Done()
				now := time.Now()
				rec := &signing.Record{
					ID: uuid.NewString(), Owner: "backend", Message: []byte("m"), Created: now, Expires: now.Add(time.Minute),
					Status: signing.StatusPending, Async: true, IdemKey: idem,
				}
				held, err := s.Claim(context.Background(), rec)
				results <- result{rec.ID, held, err}
			}(stores[c%len(stores)])
		}
		wg.Wait()
		close(results)
		var winners []string
		var heldIDs []string
		for res := range results {
			switch {
			case res.err == nil:
				winners = append(winners, res.id)
			case errors.Is(res.err, signing.ErrClaimed):
				heldIDs = append(heldIDs, res.held.ID)
			default:
				t.Fatalf("round %d: a claim failed: %v", r, res.err)
			}
		}
		if len(winners) != 1 {
			t.Fatalf("round %d: %d claims won one idempotency key", r, len(winners))
		}
		for _, id := range heldIDs {
			if id != winners[0] {
				t.Fatalf("round %d: a loser was given %s, the winner is %s", r, id, winners[0])
			}
		}
	}
}

// failingUpdates fails every Update with err; everything else is kv's.
type failingUpdates struct {
	jetstream.KeyValue
	err     error
	updates int
}

func (f *failingUpdates) Update(context.Context, string, []byte, uint64) (uint64, error) {
	f.updates++
	return 0, f.err
}

func TestConflictIsTheOnlyFailureTriedAgain(t *testing.T) {
	full := &jetstream.APIError{Code: 503, ErrorCode: 10077, Description: "maximum bytes exceeded"}
	for _, tc := range []struct {
		err      error
		conflict bool
	}{
		{fmt.Errorf("update: %w", &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequenceConstant}), true},
		{&jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence}, true},
		{jetstream.ErrKeyExists, true},
		{jetstream.ErrKeyRevisionMismatch, true},
		{full, false},
		{context.DeadlineExceeded, false},
	} {
		if got := conflict(tc.err); got != tc.conflict {
			t.Fatalf("conflict(%v) = %v", tc.err, got)
		}
	}
	// A write that fails for good is given up at once, not tried for
	// the store's whole deadline (Save runs where a request ends).
	stores := threeStores(t)
	s := stores[0]
	now := time.Now()
	rec := &signing.Record{ID: uuid.NewString(), Owner: "backend", Created: now, Expires: now.Add(time.Minute), Status: signing.StatusPending, Async: true}
	if _, err := s.Claim(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	var fake jetstream.KeyValue = &failingUpdates{KeyValue: *s.kv.Load(), err: full}
	s.kv.Store(&fake)
	rec.Status, rec.Completed = signing.StatusSigned, time.Now()
	s.Save(rec)
	if f := fake.(*failingUpdates); f.updates != 1 {
		t.Fatalf("Save tried a write that cannot succeed %d times", f.updates)
	}
}
