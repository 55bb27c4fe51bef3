package signing

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"

	"github.com/signrelay/signrelay/protocol"
	"github.com/signrelay/signrelay/registry"
)

// Shared keeps request resources where every node of a cluster sees them,
// so that a request made on one node can be read, waited for, replayed and
// cancelled on any other, and taken over when its node dies. A nil Shared
// is one node: resources live in this node's memory only. Only resources
// (asynchronous requests and those with an idempotency key) reach it; a
// blocking request without a key never does.
//
// The service calls it outside its locks; every call may do I/O.
type Shared interface {
	// Claim records rec, a new pending resource made on this node. With
	// rec.IdemKey set the first claim of (rec.Owner, rec.IdemKey) wins:
	// a later one gets ErrClaimed and the winner's record.
	Claim(ctx context.Context, rec *Record) (*Record, error)
	// Release forgets a claim whose request was never made (it failed
	// before, or no node held its key), so that a retry starts fresh.
	Release(rec *Record)
	// Save records how a request made or adopted here ended.
	Save(rec *Record)
	// Get returns owner's resource id, ErrNotFound when there is none.
	Get(ctx context.Context, owner, id string) (*Record, error)
	// Wait returns owner's resource id once it ended, or as it is when
	// ctx is done.
	Wait(ctx context.Context, owner, id string) (*Record, error)
	// Cancel has the node that runs owner's resource id cancel it, with
	// Service.Cancel's results.
	Cancel(ctx context.Context, owner, id string) (*Record, error)
}

// ErrClaimed: the idempotency key was claimed first by another request.
var ErrClaimed = errors.New("the idempotency key is claimed by another request")

// getShared reads a resource that does not run here, waiting up to wait
// for its end.
func (s *Service) getShared(ctx context.Context, owner, id string, wait time.Duration) (*Record, error) {
	if wait <= 0 {
		return s.opts.Shared.Get(ctx, owner, id)
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	return s.opts.Shared.Wait(ctx, owner, id)
}

// Adopt takes over rec, a pending resource whose node is gone: it runs
// here from now on, with the same request_id, expires_at and message, and
// is offered again to the key's connections on every node (those that
// had it keep it: the id is the same). It reports false when rec has
// expired or is already pending here.
func (s *Service) Adopt(rec *Record) bool {
	if s.closing.Load() || !time.Now().Before(rec.Expires) {
		return false
	}
	id, err := uuid.Parse(rec.ID)
	if err != nil {
		return false
	}
	p := newPending(id, rec)
	// Adopted requests wait for a holder: the nodes of their recipients
	// may come back, and a 404 is no longer an answer.
	p.waitForHolder = true
	if s.res.get(p.owner, p.id) != nil {
		return false
	}
	// The cluster's store holds its idempotency key; here it is found by id.
	r := &resource{id: p.id, owner: p.owner, fp: p.fp, p: p}
	s.res.add(r)
	p.res = r
	var ho Handover
	if s.bus != nil {
		ho = s.bus.Adopt(p.idStr)
	}
	have := make(map[registry.Holder]struct{}, len(ho.Have))
	for _, h := range ho.Have {
		have[h] = struct{}{}
	}
	if len(ho.Failed) > 0 {
		p.failed = make(map[registry.Holder]struct{}, len(ho.Failed))
		for _, h := range ho.Failed {
			p.failed[h] = struct{}{}
		}
	}
	if err := s.publish(p, have); err != nil {
		s.unmake(p, err)
		return false
	}
	s.log.Info("request taken over", "request_id", p.idStr, "key", p.key.ShortString(), "here", len(have))
	// Answers given here while nobody owned the request: they count now,
	// and the first valid one ends it. Nobody has told their key holders
	// anything of them yet: each gets its error, as on one node.
	for _, a := range ho.Answers {
		var ferr *protocol.FrameError
		switch {
		case a.Response != nil:
			ferr = s.Respond(a.By, a.Response)
		case a.Reject != nil:
			ferr = s.Reject(a.By, a.Reject)
		}
		if ferr != nil {
			a.By.Send(ferr.Frame())
		}
	}
	return true
}

// Journal hears of every request's end first, before any waiter and
// before the end is recorded anywhere else: the audit log. Ended may do
// I/O; the service calls it outside its locks. When it fails for a
// signature, the signature is not released: the request ends with
// ErrJournal instead (503).
type Journal interface {
	Ended(rec *Record, err error) error
}

// ErrJournal: the request's end could not be written to the audit log, so
// its signature is withheld.
var ErrJournal = errors.New("the relay cannot write its audit log; the signature is withheld")

// Journaled records in the journal the end of rec, a request that ended
// without running here: a takeover found it past its deadline, or could
// not run it. Every end gets its line, wherever it is decided.
func (s *Service) Journaled(rec *Record, err error) {
	if s.opts.Journal == nil {
		return
	}
	if jerr := s.opts.Journal.Ended(rec, err); jerr != nil {
		s.log.Error("audit log not written", "request_id", rec.ID, "err", jerr)
	}
}
