package client

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"
)

// SignRequest is what a backend asks a key holder to sign.
type SignRequest struct {
	// PublicKey names the key holder: the Ed25519 public key (32 bytes)
	// whose private half should sign.
	PublicKey ed25519.PublicKey
	// Message is the exact bytes to sign (at least one; not starting with
	// the relay's reserved "signing-relay/").
	Message []byte
	// Description is shown to the person next to the message (at most 256
	// characters); it is not signed.
	Description string
	// Timeout is how long the relay waits for an answer. Zero means the
	// relay's default (60 s unless configured otherwise). A blocking Sign
	// allows at most 60 s, SignAsync up to the relay's
	// sign.max_async_timeout (at least 10 min). It is rounded up to whole
	// milliseconds.
	Timeout time.Duration
	// WaitForHolder makes a request for a key with no live connection wait
	// for one, until Timeout, instead of failing with ErrNotConnected: the
	// person may open the page after the backend asked.
	WaitForHolder bool
	// IdempotencyKey names the request for retries: every call with the
	// same key (and the same API key) and the same request joins one
	// request, so the person is asked once. When empty, the client makes
	// a random one for each Sign or SignAsync call and sends it with every
	// retry of that call. Set it yourself to join a request across calls
	// or processes (a job that is restarted, say): 1–255 visible ASCII
	// characters. The relay remembers it for its sign.result_ttl (1 h by
	// default); reusing it for a different request is
	// ErrIdempotencyKeyReused.
	IdempotencyKey string
}

// Signature is a signature the relay returned and the client verified
// against the public key and message it asked for.
type Signature struct {
	RequestID string
	PublicKey ed25519.PublicKey
	Message   []byte
	// Signature is the 64-byte Ed25519 signature of Message by PublicKey.
	Signature []byte
	// Replayed is set when the relay answered a retry with a request that
	// was already made (Idempotent-Replayed: true): the holder was not
	// asked again.
	Replayed bool
}

// Status is where a request is in its life. Every request starts pending
// and ends in exactly one of the other states.
type Status string

// The states of a request resource (contract §C).
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

// Ended reports whether s is a final state (anything but pending).
func (s Status) Ended() bool { return s != StatusPending }

// Request is a request resource: what the relay knows of one request made
// by SignAsync (or by Sign, which always sends an idempotency key), as Get,
// Wait and Cancel show it.
type Request struct {
	ID          string
	Status      Status
	PublicKey   ed25519.PublicKey
	Message     []byte
	Description string
	// Requester is the name of the API key that made the request, as the
	// key holder is shown it; "" for a key without a name.
	Requester string
	CreatedAt time.Time
	ExpiresAt time.Time
	// CompletedAt is when it ended; zero while pending.
	CompletedAt time.Time
	// Signature is set when Status is StatusSigned. The client has
	// verified it against PublicKey and Message.
	Signature []byte
	// Error is set exactly when the request ended without a signature. Its
	// Status is the one a blocking call gets for that end (403 for
	// rejected, 504 for timeout, ...), so it matches the same sentinels.
	Error *Error
	// Replayed is set when SignAsync joined a request made before under
	// the same idempotency key (Idempotent-Replayed: true).
	Replayed bool
}

// Err is the request's outcome as an error: nil while pending or when
// signed, else Error (which matches ErrRejected, ErrTimeout,
// ErrCancelled, ErrInvalidSignature or ErrUnavailable with errors.Is).
func (r *Request) Err() error {
	if r == nil || r.Error == nil {
		return nil
	}
	return r.Error
}

// --- the wire ----------------------------------------------------------

var b64 = base64.StdEncoding

type wireSignBody struct {
	PublicKey     string `json:"public_key"`
	Message       string `json:"message"`
	Description   string `json:"description,omitempty"`
	TimeoutMS     int64  `json:"timeout_ms,omitempty"`
	Wait          *bool  `json:"wait,omitempty"`
	WaitForHolder bool   `json:"wait_for_holder,omitempty"`
}

type wireResult struct {
	RequestID string `json:"request_id"`
	PublicKey string `json:"public_key"`
	Message   string `json:"message"`
	Signature string `json:"signature"`
}

type wireError struct {
	Code    string  `json:"code"`
	Message string  `json:"message"`
	Reason  *string `json:"reason"`
}

type wireErrorBody struct {
	Error     *wireError `json:"error"`
	RequestID string     `json:"request_id"`
}

type wireResource struct {
	RequestID   string     `json:"request_id"`
	Status      string     `json:"status"`
	PublicKey   string     `json:"public_key"`
	Message     string     `json:"message"`
	Description string     `json:"description"`
	Requester   string     `json:"requester"`
	CreatedAt   string     `json:"created_at"`
	ExpiresAt   string     `json:"expires_at"`
	CompletedAt string     `json:"completed_at"`
	Signature   string     `json:"signature"`
	Error       *wireError `json:"error"`
}

func unexpected(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrUnexpectedResponse}, args...)...)
}

// decodeResource reads a resource body and checks it is one: known
// status, base64 fields, a 32-byte key, and for a signed one a signature
// that verifies against its own key and message.
func decodeResource(body []byte) (*Request, error) {
	var w wireResource
	if err := json.Unmarshal(body, &w); err != nil {
		return nil, unexpected("resource is not JSON: %v", err)
	}
	r := &Request{
		ID: w.RequestID, Status: Status(w.Status), Description: w.Description, Requester: w.Requester,
	}
	if r.ID == "" {
		return nil, unexpected("resource without a request_id")
	}
	var err error
	if r.PublicKey, err = decodeKey(w.PublicKey); err != nil {
		return nil, unexpected("resource %s: public_key: %v", r.ID, err)
	}
	if r.Message, err = b64.DecodeString(w.Message); err != nil {
		return nil, unexpected("resource %s: message: %v", r.ID, err)
	}
	for _, t := range []struct {
		dst      *time.Time
		s        string
		optional bool
	}{{&r.CreatedAt, w.CreatedAt, false}, {&r.ExpiresAt, w.ExpiresAt, false}, {&r.CompletedAt, w.CompletedAt, !r.Status.Ended()}} {
		if t.s == "" && t.optional {
			continue
		}
		if *t.dst, err = time.Parse(time.RFC3339Nano, t.s); err != nil {
			return nil, unexpected("resource %s: time %q: %v", r.ID, t.s, err)
		}
	}
	switch r.Status {
	case StatusPending:
	case StatusSigned:
		if r.Signature, err = b64.DecodeString(w.Signature); err != nil {
			return nil, unexpected("resource %s: signature: %v", r.ID, err)
		}
		if !ed25519.Verify(r.PublicKey, r.Message, r.Signature) {
			return nil, fmt.Errorf("%w (request %s)", ErrUnverifiedSignature, r.ID)
		}
	case StatusRejected, StatusInvalidSignature, StatusTimeout, StatusCancelled, StatusUnavailable:
		if w.Error == nil {
			return nil, unexpected("resource %s is %s without an error", r.ID, r.Status)
		}
		r.Error = &Error{Code: w.Error.Code, Message: w.Error.Message, RequestID: r.ID}
		if c, ok := codes[w.Error.Code]; ok {
			r.Error.Status = c.status
		}
		if w.Error.Reason != nil {
			r.Error.Reason = *w.Error.Reason
		}
	default:
		return nil, unexpected("resource %s has unknown status %q", r.ID, w.Status)
	}
	return r, nil
}

// decodeResult reads a 200 body of POST /sign and checks that it is a
// signature of what was asked.
func decodeResult(body []byte, pub ed25519.PublicKey, msg []byte) (*Signature, error) {
	var w wireResult
	if err := json.Unmarshal(body, &w); err != nil {
		return nil, unexpected("result is not JSON: %v", err)
	}
	s := &Signature{RequestID: w.RequestID}
	var err error
	if s.PublicKey, err = decodeKey(w.PublicKey); err != nil {
		return nil, unexpected("result public_key: %v", err)
	}
	if s.Message, err = b64.DecodeString(w.Message); err != nil {
		return nil, unexpected("result message: %v", err)
	}
	if s.Signature, err = b64.DecodeString(w.Signature); err != nil {
		return nil, unexpected("result signature: %v", err)
	}
	if err := verifyFor(s.RequestID, s.PublicKey, s.Message, s.Signature, pub, msg); err != nil {
		return nil, err
	}
	return s, nil
}

// verifyFor checks that a signature the relay returned is by the key
// asked for, over the message asked for.
func verifyFor(id string, gotKey ed25519.PublicKey, gotMsg, sig []byte, pub ed25519.PublicKey, msg []byte) error {
	switch {
	case !bytes.Equal(gotKey, pub):
		return fmt.Errorf("%w: it is for another public key (request %s)", ErrUnverifiedSignature, id)
	case !bytes.Equal(gotMsg, msg):
		return fmt.Errorf("%w: it is for another message (request %s)", ErrUnverifiedSignature, id)
	case !ed25519.Verify(pub, msg, sig):
		return fmt.Errorf("%w (request %s)", ErrUnverifiedSignature, id)
	}
	return nil
}

func decodeKey(s string) (ed25519.PublicKey, error) {
	k, err := b64.DecodeString(s)
	if err != nil {
		return nil, err
	}
	if len(k) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%d bytes, want %d", len(k), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(k), nil
}
