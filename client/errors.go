package client

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Sentinels for every outcome of the contract. The errors of this package
// match them with errors.Is, so that a caller can branch on what happened
// without looking at status codes:
//
//	if errors.Is(err, client.ErrRejected) { ... }
//
// An *Error matches the sentinel of its Code (for a body that is not the
// contract's, of its Status where that is unambiguous).
var (
	// ErrInvalidRequest (400 invalid_request): the relay refused the call
	// as malformed: bad base64 or lengths, an empty message or one in the
	// reserved "signing-relay/" prefix, a description over 256 characters,
	// timeout_ms out of range, a bad Idempotency-Key, wait_ms or request
	// id. The client also returns it, wrapped, for a public key that is not
	// 32 bytes, without calling the relay.
	ErrInvalidRequest = errors.New("signrelay: invalid request")
	// ErrUnauthorized (401 unauthorized): the API key is missing or unknown.
	ErrUnauthorized = errors.New("signrelay: unauthorized")
	// ErrRejected (403 rejected): the key holder declined; Error.Reason
	// holds its words.
	ErrRejected = errors.New("signrelay: rejected by the key holder")
	// ErrNotConnected (404 not_connected): no live connection holds the
	// public key. SignRequest.WaitForHolder waits for one instead.
	ErrNotConnected = errors.New("signrelay: no key holder connected")
	// ErrNotFound (404 not_found): no request of that id is visible to this
	// API key: unknown, forgotten after the relay's result_ttl, or made by
	// another API key.
	ErrNotFound = errors.New("signrelay: no such request")
	// ErrCancelled (409 cancelled): the request was cancelled with
	// DELETE /sign/{id} (Client.Cancel) while a blocking call waited.
	ErrCancelled = errors.New("signrelay: request cancelled")
	// ErrNotPending (409 not_pending): Cancel came after the request had
	// ended otherwise (signed, rejected, timed out, ...).
	ErrNotPending = errors.New("signrelay: request no longer pending")
	// ErrMessageTooLarge (413 message_too_large): the message is over the
	// relay's sign.max_message_bytes.
	ErrMessageTooLarge = errors.New("signrelay: message too large")
	// ErrIdempotencyKeyReused (422 idempotency_key_reused): the
	// Idempotency-Key was used before for a different request (another
	// key, message, description, timeout or wait_for_holder);
	// Error.RequestID names the earlier request.
	ErrIdempotencyKeyReused = errors.New("signrelay: idempotency key reused for a different request")
	// ErrRateLimited (429 rate_limited): a rate limit was hit; Error.RetryAfter
	// says when to try again. The client retries it by itself while the
	// wait is within RetryPolicy.MaxRetryAfter.
	ErrRateLimited = errors.New("signrelay: rate limited")
	// ErrInvalidSignature (502 invalid_signature): every connection of the
	// key answered with a signature that does not verify.
	ErrInvalidSignature = errors.New("signrelay: key holder answered with an invalid signature")
	// ErrUnavailable (503 unavailable): the relay is shutting down, too
	// many requests are pending, or (as a request's end) the relay lost the
	// request. The client retries a 503 by itself.
	ErrUnavailable = errors.New("signrelay: relay unavailable")
	// ErrTimeout (504 timeout): no answer before the request's deadline.
	ErrTimeout = errors.New("signrelay: no answer before the deadline")
	// ErrUnexpectedResponse: an answer outside the contract, such as a
	// proxy's error page, a status the contract does not name, or a body
	// that is not what its status promises.
	ErrUnexpectedResponse = errors.New("signrelay: unexpected response")
	// ErrUnverifiedSignature: the relay returned a signature that does not
	// verify against the public key and message asked for, or returned
	// another key or message. The relay verifies every signature itself, so
	// this means a broken or hostile relay (or something in between); the
	// signature is never handed to the caller.
	ErrUnverifiedSignature = errors.New("signrelay: the relay returned a signature that does not verify")
)

// codes maps the contract's error codes to their sentinels and to the
// status a blocking POST /sign answers them with.
var codes = map[string]struct {
	err    error
	status int
}{
	"invalid_request":        {ErrInvalidRequest, http.StatusBadRequest},
	"unauthorized":           {ErrUnauthorized, http.StatusUnauthorized},
	"rejected":               {ErrRejected, http.StatusForbidden},
	"not_connected":          {ErrNotConnected, http.StatusNotFound},
	"not_found":              {ErrNotFound, http.StatusNotFound},
	"cancelled":              {ErrCancelled, http.StatusConflict},
	"not_pending":            {ErrNotPending, http.StatusConflict},
	"message_too_large":      {ErrMessageTooLarge, http.StatusRequestEntityTooLarge},
	"idempotency_key_reused": {ErrIdempotencyKeyReused, http.StatusUnprocessableEntity},
	"rate_limited":           {ErrRateLimited, http.StatusTooManyRequests},
	"invalid_signature":      {ErrInvalidSignature, http.StatusBadGateway},
	"unavailable":            {ErrUnavailable, http.StatusServiceUnavailable},
	"timeout":                {ErrTimeout, http.StatusGatewayTimeout},
}

// byStatus names the sentinel of an answer without the contract's body
// (a proxy's page, say) where the status alone is unambiguous.
var byStatus = map[int]error{
	http.StatusUnauthorized:          ErrUnauthorized,
	http.StatusRequestEntityTooLarge: ErrMessageTooLarge,
	http.StatusTooManyRequests:       ErrRateLimited,
	http.StatusServiceUnavailable:    ErrUnavailable,
}

// Error is an answer of the relay that is not a success, or the end of a
// request that gave no signature (Request.Error). It carries everything the
// contract's error body says, so that logs and callers need nothing else.
type Error struct {
	// Status is the HTTP status; for Request.Error, the status a blocking
	// call gets for that end (403 rejected, 504 timeout, ...).
	Status int
	// Code is the contract's error.code ("rejected", "timeout", ...), or ""
	// when the body was not the contract's.
	Code string
	// Message is the relay's human text (or the start of a foreign body).
	Message string
	// Reason is the key holder's own words when it rejected the request.
	Reason string
	// RequestID names the request when one was made: the one that ended
	// so, or for 422 the request the idempotency key belongs to.
	RequestID string
	// RetryAfter is the Retry-After header of a 429 or 503, zero if none.
	RetryAfter time.Duration
	// Replayed is set when the answer is a stored outcome, replayed for an
	// idempotency key (Idempotent-Replayed: true).
	Replayed bool
}

func (e *Error) Error() string {
	s := "signrelay: " + strconv.Itoa(e.Status)
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.Reason != "" && e.Code == "rejected" && !endsWith(e.Message, e.Reason) {
		s += ": " + e.Reason
	}
	if e.RequestID != "" {
		s += " (request " + e.RequestID + ")"
	}
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(" (retry after %s)", e.RetryAfter)
	}
	return s
}

func endsWith(s, suffix string) bool {
	return len(s) >= len(suffix) && s[len(s)-len(suffix):] == suffix
}

// Is makes errors.Is(err, ErrRejected) and the like true for an *Error of
// that code.
func (e *Error) Is(target error) bool { return target == e.sentinel() }

func (e *Error) sentinel() error {
	if c, ok := codes[e.Code]; ok {
		return c.err
	}
	if e.Code == "" {
		if s, ok := byStatus[e.Status]; ok {
			return s
		}
	}
	return ErrUnexpectedResponse
}
