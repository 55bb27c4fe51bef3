package signer

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/signrelay/signrelay/protocol"
)

// ErrClosed is a Session's Err after its own Close, and what its methods
// return once the session has ended that way.
var ErrClosed = errors.New("signer: session closed")

// ErrNotPending is returned by Approve and Reject for a request this session
// cannot answer: unknown, already answered or being answered, or cancelled
// by the relay. Nothing is sent in that case.
var ErrNotPending = errors.New("signer: request is not pending on this session")

// ErrAnswered is the cause (see context.Cause) of a request's context once
// this session has sent its answer, so that work tied to the request stops.
var ErrAnswered = errors.New("signer: request answered")

// ErrProtocol is wrapped by the errors that report a relay breaking the
// wire contract during the introduction (unexpected frame, bad nonce, wrong
// key confirmed). Retrying the same relay is unlikely to help.
var ErrProtocol = errors.New("signer: relay broke the protocol")

// CancelError is the cause of a request's context when the relay sent
// sign_cancel for it. Reason is one of protocol.Cancel* ("timeout",
// "answered_elsewhere", "requester_gone", "shutdown", "cancelled") or a
// newer one, which is passed on as the relay sent it.
type CancelError struct {
	RequestID string
	Reason    string
}

// cancelReasonText says in words what each reason of the contract means.
var cancelReasonText = map[string]string{
	protocol.CancelTimeout:           "no answer before its deadline",
	protocol.CancelAnsweredElsewhere: "another connection of the key answered it",
	protocol.CancelRequesterGone:     "the backend that asked went away",
	protocol.CancelShutdown:          "the relay is shutting down",
	protocol.CancelCancelled:         "the backend that asked cancelled it",
}

// Error names the request and the relay's reason, with what a known
// reason means.
func (e *CancelError) Error() string {
	if text, ok := cancelReasonText[e.Reason]; ok {
		return fmt.Sprintf("signer: request %s cancelled by the relay (%s: %s)", e.RequestID, e.Reason, text)
	}
	return fmt.Sprintf("signer: request %s cancelled by the relay (%s)", e.RequestID, e.Reason)
}

// ByRequester reports whether the backend that asked took the request
// back (reason "cancelled", DELETE /sign/{id}), as opposed to the relay
// ending it.
func (e *CancelError) ByRequester() bool { return e.Reason == protocol.CancelCancelled }

// CloseError says why a session's connection ended when it was not this
// side's Close: Code is the WebSocket close code the relay sent (1001 relay
// shutting down, 1008 policy violation, 1009 frame too big, ...), or 1006
// when the connection dropped without a close frame. A 4401 during Dial is
// reported as an *IntroductionError instead. Err is the underlying error
// when there is one: a network error, or websocket.ErrReadLimit when the
// relay sent a frame over DialOptions.ReadLimit (Code is then 1009 and this
// side closed).
type CloseError struct {
	Code int
	Text string
	Err  error
}

// Error gives the close code, its text and the underlying error.
func (e *CloseError) Error() string {
	s := "signer: connection closed with code " + strconv.Itoa(e.Code)
	if e.Text != "" {
		s += " (" + e.Text + ")"
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the underlying error, if any.
func (e *CloseError) Unwrap() error { return e.Err }

// IntroductionError is Dial's error when the relay refused the introduction:
// Code and Message come from its error frame ("introduction_failed" and a
// human text; empty when it closed without one) and CloseCode is the close
// code that followed (4401 per the contract; 0 if none arrived in time).
type IntroductionError struct {
	Code      string
	Message   string
	CloseCode int
}

// Error gives the relay's code, message and close code.
func (e *IntroductionError) Error() string {
	s := "signer: introduction refused"
	if e.Code != "" {
		s += ": " + e.Code
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.CloseCode != 0 {
		s += " (close " + strconv.Itoa(e.CloseCode) + ")"
	}
	return s
}

// HandshakeError is Dial's error when the relay answered the WebSocket
// upgrade with a plain HTTP response (429 when rate limited, 403 for an
// origin it does not allow, 503 while shutting down, ...). Code and Message
// come from the relay's JSON error body when it has one; RetryAfter is the
// Retry-After header (zero when absent). Run waits at least RetryAfter
// before the next attempt.
type HandshakeError struct {
	StatusCode int
	Code       string
	Message    string
	RetryAfter time.Duration
	Header     http.Header
}

// Error gives the HTTP status and the relay's error code and message.
func (e *HandshakeError) Error() string {
	s := fmt.Sprintf("signer: relay refused the WebSocket upgrade: HTTP %d", e.StatusCode)
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// RelayError is an error frame the relay sent on an introduced connection
// about something this side sent: an answer for a request that is no longer
// pending ("unknown_request"), a signature that did not verify
// ("invalid_signature"), and so on. RequestID is set when the relay named
// the request. Sessions deliver them on Errors; they do not end a session.
type RelayError struct {
	Code      string
	Message   string
	RequestID string
}

// Error gives the relay's code, the request and the message.
func (e *RelayError) Error() string {
	s := "signer: relay error " + e.Code
	if e.RequestID != "" {
		s += " for request " + e.RequestID
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}
