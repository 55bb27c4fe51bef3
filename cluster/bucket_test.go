package cluster

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// flakyKV fails its first fails writes with err, then succeeds.
type flakyKV struct {
	jetstream.KeyValue
	err   error
	fails int
	tries int
}

func (f *flakyKV) Put(context.Context, string, []byte) (uint64, error) {
	f.tries++
	if f.tries <= f.fails {
		return 0, f.err
	}
	return 1, nil
}

func TestBucketTriesAgainBetweenLeaders(t *testing.T) {
	for _, tc := range []struct {
		name  string
		err   error
		tries int // how many tries a write that fails twice gets
	}{
		{"no responders", nats.ErrNoResponders, 3},
		{"no response from stream", fmt.Errorf("publish: %w", jetstream.ErrNoStreamResponse), 3},
		{"temporarily unavailable", &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, 3},
		// Not tried again: the write may have landed, or failed for good.
		{"timeout", context.DeadlineExceeded, 1},
		{"key exists", jetstream.ErrKeyExists, 1},
		{"no JetStream", jetstream.ErrJetStreamNotEnabled, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &flakyKV{err: tc.err, fails: 2}
			_, err := bucket{f}.Put(context.Background(), "k", nil)
			if f.tries != tc.tries {
				t.Fatalf("%d tries, want %d", f.tries, tc.tries)
			}
			if (tc.tries == 1) != errors.Is(err, tc.err) {
				t.Fatalf("err %v", err)
			}
		})
	}
}

func TestBucketStopsWithItsContext(t *testing.T) {
	f := &flakyKV{err: nats.ErrNoResponders, fails: 1 << 30}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := (bucket{f}).Put(ctx, "k", nil); !errors.Is(err, nats.ErrNoResponders) || f.tries != 1 {
		t.Fatalf("err %v after %d tries", err, f.tries)
	}
}
