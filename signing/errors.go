package signing

import "errors"

// Outcomes of Sign other than success. The HTTP layer maps each to one status
// code of the contract in a single table; errors.Is matches them.
var (
	// ErrNotConnected: no live connection holds the key when the request starts.
	ErrNotConnected = errors.New("no live connection holds that public key")
	// ErrTimeout: no valid answer before the request's deadline.
	ErrTimeout = errors.New("no valid answer before the deadline")
	// ErrRejected: a key holder declined; the error is a *RejectedError.
	ErrRejected = errors.New("the key holder declined")
	// ErrInvalidSignature: every live connection of the key answered with a
	// signature that does not verify (or echoed another message).
	ErrInvalidSignature = errors.New("the key holder answered with an invalid signature")
	// ErrShuttingDown: the relay is stopping and takes no more requests.
	ErrShuttingDown = errors.New("the relay is shutting down")
	// ErrTooManyPending: the key already has the configured maximum of pending requests.
	ErrTooManyPending = errors.New("too many requests are pending for that key")
	// ErrClusterUnreachable: no local connection holds the key and the
	// other nodes cannot be reached, so whether one of them does is unknown.
	ErrClusterUnreachable = errors.New("this node cannot reach the rest of the relay, and holds no connection of that key")
	// ErrRequesterGone: the caller cancelled its context (the backend went away).
	ErrRequesterGone = errors.New("the requester went away")
)

// RejectedError carries the reason a key holder gave with sign_reject.
type RejectedError struct{ Reason string }

func (e *RejectedError) Error() string {
	if e.Reason == "" {
		return ErrRejected.Error()
	}
	return ErrRejected.Error() + ": " + e.Reason
}

// Is makes errors.Is(err, ErrRejected) true.
func (e *RejectedError) Is(target error) bool { return target == ErrRejected }

// Outcomes of the resource API (Get, Cancel, Start with an idempotency key).
var (
	// ErrCancelled: the request was cancelled by its backend (DELETE).
	ErrCancelled = errors.New("the request was cancelled by its requester")
	// ErrNotFound: no request resource of that id is visible to this API
	// key (unknown, forgotten after sign.result_ttl, or another key's).
	ErrNotFound = errors.New("no such request")
	// ErrNotPending: the request ended otherwise before it could be cancelled.
	ErrNotPending = errors.New("the request is no longer pending")
	// ErrIdempotencyKeyReused: the error is an *IdempotencyError.
	ErrIdempotencyKeyReused = errors.New("the Idempotency-Key was used for a different request")
)

// IdempotencyError refuses an idempotency key used before for a request
// with another fingerprint; RequestID names that request.
type IdempotencyError struct{ RequestID string }

func (e *IdempotencyError) Error() string { return ErrIdempotencyKeyReused.Error() }

// Is makes errors.Is(err, ErrIdempotencyKeyReused) true.
func (e *IdempotencyError) Is(target error) bool { return target == ErrIdempotencyKeyReused }
