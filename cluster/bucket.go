package cluster

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// retryWait is the pause before a store operation is tried again.
const retryWait = 50 * time.Millisecond

// bucket is the request bucket with every operation the store uses tried
// again while JetStream answers that it is between leaders: while a
// stream's leader moves (an election, a slow replica under load), a write
// finds no responder and the API answers "temporarily unavailable", each
// for a moment, and a request must not fail for that. An error of that
// kind means the operation was not carried out, so trying again cannot
// write twice; a timeout is not tried again (its write may have landed).
// The tries end with ctx or after storeOp, whichever comes first.
type bucket struct {
	jetstream.KeyValue
}

// transient reports whether err says that JetStream did not carry the
// operation out for now, and would a moment later.
func transient(err error) bool {
	if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) {
		return true
	}
	var api *jetstream.APIError
	return errors.As(err, &api) && api.ErrorCode == jsClusterNotAvailable
}

// conflict reports whether err is a compare-and-set that lost: the key
// exists, or its revision is not the one written over. nats.go maps the
// replicated stream's answer (10164) for Update, but not for a Create over
// a deleted key, which it writes as an update of the delete marker.
func conflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var api *jetstream.APIError
	return errors.As(err, &api) &&
		(api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// jsClusterNotAvailable is the JetStream API's "JetStream system
// temporarily unavailable" (nats-server's JSClusterNotAvailErr).
const jsClusterNotAvailable jetstream.ErrorCode = 10008

// pause waits retryWait before a compare-and-set is tried again, and
// reports false when ctx ends first.
func pause(ctx context.Context) bool { return sleep(ctx, retryWait) }

// sleep waits d, and reports false when ctx ends first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func again[T any](ctx context.Context, op func() (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, storeOp)
	defer cancel()
	for {
		v, err := op()
		if err == nil || !transient(err) || !pause(ctx) {
			return v, err
		}
	}
}

func (b bucket) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	return again(ctx, func() (jetstream.KeyValueEntry, error) { return b.KeyValue.Get(ctx, key) })
}

func (b bucket) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	return again(ctx, func() (uint64, error) { return b.KeyValue.Put(ctx, key, value) })
}

func (b bucket) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	return again(ctx, func() (uint64, error) { return b.KeyValue.Create(ctx, key, value, opts...) })
}

func (b bucket) Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error) {
	return again(ctx, func() (uint64, error) { return b.KeyValue.Update(ctx, key, value, revision) })
}

func (b bucket) Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	_, err := again(ctx, func() (struct{}, error) { return struct{}{}, b.KeyValue.Delete(ctx, key, opts...) })
	return err
}

func (b bucket) Purge(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	_, err := again(ctx, func() (struct{}, error) { return struct{}{}, b.KeyValue.Purge(ctx, key, opts...) })
	return err
}

func (b bucket) Watch(ctx context.Context, key string, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	return again(ctx, func() (jetstream.KeyWatcher, error) { return b.KeyValue.Watch(ctx, key, opts...) })
}
