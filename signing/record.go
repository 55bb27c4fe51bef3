package signing

import (
	"errors"
	"time"

	"github.com/signrelay/signrelay/protocol"
)

// Status is where a request is in its life: pending, then exactly one of
// the ended states. The names are the contract's (§C).
type Status string

// The states of a request. Every request starts pending; finish moves it
// to one of the others, once.
const (
	StatusPending          Status = "pending"
	StatusSigned           Status = "signed"
	StatusRejected         Status = "rejected"
	StatusInvalidSignature Status = "invalid_signature"
	StatusTimeout          Status = "timeout"
	StatusCancelled        Status = "cancelled"
	// StatusUnavailable: the relay shut down or lost the request.
	StatusUnavailable Status = "unavailable"
)

// Record is a request as its resource shows it: a snapshot, owned by the
// caller that got it.
type Record struct {
	ID string
	// Owner names the API key that made the request; only it may see it.
	Owner       string
	Requester   string
	Key         protocol.PublicKey
	Message     []byte
	Description string
	Created     time.Time
	Expires     time.Time
	Completed   time.Time // zero while pending
	Status      Status
	Signature   []byte // only when Status is StatusSigned
	Reason      string // the holder's words, StatusRejected only
	// Async is set for a request made with "wait": false.
	Async bool
	// WaitForHolder, IdemKey and Fingerprint are what the request was made
	// with: a node that takes the request over needs them.
	WaitForHolder bool
	IdemKey       string
	Fingerprint   [32]byte
}

// Err is the error a blocking call for the request gets: nil when it was
// signed (or is pending), else one of this package's sentinels.
func (r *Record) Err() error {
	switch r.Status {
	case StatusPending, StatusSigned:
		return nil
	case StatusRejected:
		return &RejectedError{Reason: r.Reason}
	case StatusInvalidSignature:
		return ErrInvalidSignature
	case StatusTimeout:
		return ErrTimeout
	case StatusCancelled:
		return ErrCancelled
	}
	return ErrShuttingDown
}

// statusOf is the ended state an outcome puts a request in.
func statusOf(err error) Status {
	switch {
	case err == nil:
		return StatusSigned
	case errors.Is(err, ErrRejected):
		return StatusRejected
	case errors.Is(err, ErrInvalidSignature):
		return StatusInvalidSignature
	case errors.Is(err, ErrTimeout):
		return StatusTimeout
	case errors.Is(err, ErrCancelled):
		return StatusCancelled
	}
	return StatusUnavailable
}

// recordBytes is what the results store charges for r: its variable parts
// and a fixed overhead for the entry, its maps and the Record.
func recordBytes(r *Record) int {
	return 512 + len(r.ID) + len(r.Owner) + len(r.Requester) + len(r.Message) + len(r.Description) + len(r.Signature) + len(r.Reason)
}
