package protocol

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Frame type names, the "type" field of every WebSocket frame.
const (
	TypeChallenge    = "challenge"
	TypeIntroduction = "introduction"
	TypeIntroduced   = "introduced"
	TypeSignRequest  = "sign_request"
	TypeSignResponse = "sign_response"
	TypeSignReject   = "sign_reject"
	TypeSignCancel   = "sign_cancel"
	TypeError        = "error"
)

// Reasons carried by sign_cancel.
const (
	CancelTimeout           = "timeout"
	CancelAnsweredElsewhere = "answered_elsewhere"
	CancelRequesterGone     = "requester_gone"
	CancelShutdown          = "shutdown"
	// CancelCancelled: the backend took the request back (DELETE /sign/{id}).
	CancelCancelled = "cancelled"
)

// Error codes sent to key holders in error frames. The contract names
// introduction_failed and invalid_signature; the rest are ours, documented in
// docs/protocol.md.
const (
	CodeIntroductionFailed = "introduction_failed" // then the socket closes with 4401
	CodeInvalidSignature   = "invalid_signature"   // sign_response that does not verify or echoes another message
	CodeMalformedFrame     = "malformed_frame"     // not JSON, binary, missing or ill-typed field, bad base64
	CodeUnknownType        = "unknown_type"        // a "type" the relay does not know
	CodeUnknownRequest     = "unknown_request"     // request_id not pending for this connection
	CodeAlreadyIntroduced  = "already_introduced"  // a second introduction on one connection
)

// WebSocket close codes of the contract.
const (
	CloseGoingAway          = 1001 // relay shutting down
	ClosePolicyViolation    = 1008 // too many bad frames, or a peer too slow to read
	CloseMessageTooBig      = 1009 // frame over websocket.max_frame_bytes
	CloseIntroductionFailed = 4401 // challenge not answered correctly in time
)

// Sizes fixed by the contract.
const (
	NonceSize          = 32
	SignatureSize      = 64
	MaxDescriptionRune = 256
	MaxTimeoutMS       = 60000
	// MaxAsyncTimeoutMS is the most an asynchronous request may ask for
	// on any relay (24 h); sign.max_async_timeout sets the relay's own
	// limit, at least ten minutes.
	MaxAsyncTimeoutMS = 86400000
)

// ReservedPrefix starts every message the relay itself has key holders sign.
// POST /sign refuses messages with it, so a backend can never obtain an
// introduction signature through a sign request.
const ReservedPrefix = "signing-relay/"

const introductionContext = ReservedPrefix + "v1/introduction:"

// IntroductionMessage returns the bytes a key holder signs to answer nonce.
func IntroductionMessage(nonce []byte) []byte {
	msg := make([]byte, 0, len(introductionContext)+len(nonce))
	msg = append(msg, introductionContext...)
	return append(msg, nonce...)
}

// Challenge is the relay's first frame on every connection.
type Challenge struct {
	Type  string `json:"type"`
	Nonce Bytes  `json:"nonce"`
}

// Introduction answers the challenge and proves possession of PublicKey.
type Introduction struct {
	Type      string `json:"type"`
	PublicKey Bytes  `json:"public_key" validate:"required,len=32"`
	Signature Bytes  `json:"signature" validate:"required,len=64"`
}

// Introduced confirms an introduction; SessionID names this connection.
type Introduced struct {
	Type      string    `json:"type"`
	PublicKey PublicKey `json:"public_key"`
	SessionID string    `json:"session_id"`
}

// SignRequest asks a key holder to sign Message.
type SignRequest struct {
	Type        string `json:"type"`
	RequestID   string `json:"request_id"`
	Message     Bytes  `json:"message"`
	Description string `json:"description"`
	ExpiresAt   string `json:"expires_at"`
	// Requester is the name of the API key that asks, "" for a bare key.
	Requester string `json:"requester"`
}

// SignResponse approves a request; Message must echo the requested bytes.
type SignResponse struct {
	Type      string `json:"type"`
	RequestID string `json:"request_id" validate:"required,uuid"`
	Message   Bytes  `json:"message" validate:"required"`
	Signature Bytes  `json:"signature" validate:"required,len=64"`
}

// SignReject declines a request; Reason may be empty or absent, and the
// decoder cuts it to MaxReasonRunes code points.
type SignReject struct {
	Type      string `json:"type"`
	RequestID string `json:"request_id" validate:"required,uuid"`
	Reason    string `json:"reason"`
}

// SignCancel tells a key holder that a request ended without its answer.
type SignCancel struct {
	Type      string `json:"type"`
	RequestID string `json:"request_id"`
	Reason    string `json:"reason"`
}

// ErrorFrame reports a problem with something the key holder sent.
type ErrorFrame struct {
	Type      string `json:"type"`
	Code      string `json:"code"`
	Message   string `json:"message"`
	RequestID string `json:"request_id,omitempty"`
}

// FrameError is why a key holder's frame was refused, in the wire's terms.
type FrameError struct {
	Code      string
	Message   string
	RequestID string // set when the frame carried a readable request_id
}

func (e *FrameError) Error() string { return e.Code + ": " + e.Message }

// Frame returns the error frame that reports e to the key holder.
func (e *FrameError) Frame() []byte { return EncodeError(e.Code, e.Message, e.RequestID) }

// ErrBinaryFrame is returned for binary WebSocket frames, which the contract forbids.
var ErrBinaryFrame = &FrameError{Code: CodeMalformedFrame, Message: "binary frames are not accepted; send JSON in text frames"}

// MaxReasonRunes bounds the reason of a sign_reject: the decoders cut a
// longer one to its first MaxReasonRunes code points. A reason travels back
// to the backend in the 403 body, the request resource and the logs, so a
// key holder must not be able to make those as large as a frame.
const MaxReasonRunes = 256

// DecodeHolderFrame parses one text frame from a key holder into
// *Introduction, *SignResponse or *SignReject. Any other input gives a
// *FrameError with the code to send back. Field names match exactly (after
// JSON unescaping); a field the frame's type knows may appear only once, so
// that every reader of a frame sees the same values; unknown fields are
// ignored. A sign_reject's reason is cut to MaxReasonRunes code points.
func DecodeHolderFrame(data []byte) (any, error) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return nil, &FrameError{Code: CodeMalformedFrame, Message: "frame must be a JSON object"}
	}
	if v, ok := decodeHolderFrameFast(data); ok {
		return v, nil
	}
	return decodeHolderFrameSlow(data)
}

// envelope is the part of a frame that says which frame it is.
type envelope struct {
	Type *string `json:"type"`
}

// The field tables of the frames a key holder sends.
var (
	envelopeFields     = fieldsOf[envelope]()
	introductionFields = fieldsOf[Introduction]()
	signResponseFields = fieldsOf[SignResponse]()
	signRejectFields   = fieldsOf[SignReject]()
	holderFrameFields  = fieldsOf[holderFrame]()
)

// decodeHolderFrameSlow is the reference decoder: envelope, then the typed
// frame, then the validator. It explains every refusal precisely.
func decodeHolderFrameSlow(data []byte) (any, error) {
	var env envelope
	if err := decodeObjectRef(data, &env, envelopeFields); err != nil {
		if errors.Is(err, errNotObject) {
			return nil, &FrameError{Code: CodeMalformedFrame, Message: "frame must be a JSON object"}
		}
		return nil, &FrameError{Code: CodeMalformedFrame, Message: err.Error()}
	}
	if env.Type == nil {
		return nil, &FrameError{Code: CodeMalformedFrame, Message: `missing string field "type"`}
	}
	var v any
	var fields *objectFields
	switch *env.Type {
	case TypeIntroduction:
		v, fields = new(Introduction), introductionFields
	case TypeSignResponse:
		v, fields = new(SignResponse), signResponseFields
	case TypeSignReject:
		v, fields = new(SignReject), signRejectFields
	default:
		return nil, &FrameError{Code: CodeUnknownType, Message: fmt.Sprintf("unknown frame type %q", *env.Type), RequestID: peekRequestID(data)}
	}
	if err := decodeObjectRef(data, v, fields); err != nil {
		return nil, &FrameError{Code: CodeMalformedFrame, Message: err.Error(), RequestID: peekRequestID(data)}
	}
	if err := Validate(v); err != nil {
		return nil, &FrameError{Code: CodeMalformedFrame, Message: err.Error(), RequestID: peekRequestID(data)}
	}
	if r, ok := v.(*SignReject); ok {
		r.Reason = cutRunes(r.Reason, MaxReasonRunes)
	}
	return v, nil
}

// holderFrame holds every field a key holder's frame may carry, so that a
// well-formed frame is decoded in one pass without the validator.
type holderFrame struct {
	Type      string `json:"type"`
	RequestID string `json:"request_id"`
	Message   Bytes  `json:"message"`
	Signature Bytes  `json:"signature"`
	PublicKey Bytes  `json:"public_key"`
	Reason    string `json:"reason"`
}

// decodeHolderFrameFast decodes the frames that the slow path would accept
// and says false for anything else, which the slow path then decodes again
// to produce its precise error. It never accepts what the slow path refuses.
// It refuses a repeated field of holderFrame even where the frame's type
// does not know it; the slow path then decides.
func decodeHolderFrameFast(data []byte) (any, bool) {
	var f holderFrame
	if !decodeObjectFast(data, &f, holderFrameFields) {
		return nil, false
	}
	// A missing or null type leaves "", which matches no case.
	switch f.Type {
	case TypeSignResponse:
		if !isUUID(f.RequestID) || f.Message == nil || len(f.Signature) != SignatureSize {
			return nil, false
		}
		return &SignResponse{Type: TypeSignResponse, RequestID: f.RequestID, Message: f.Message, Signature: f.Signature}, true
	case TypeSignReject:
		if !isUUID(f.RequestID) {
			return nil, false
		}
		return &SignReject{Type: TypeSignReject, RequestID: f.RequestID, Reason: cutRunes(f.Reason, MaxReasonRunes)}, true
	case TypeIntroduction:
		if len(f.PublicKey) != 32 || len(f.Signature) != SignatureSize {
			return nil, false
		}
		return &Introduction{Type: TypeIntroduction, PublicKey: f.PublicKey, Signature: f.Signature}, true
	}
	return nil, false
}

// cutRunes returns s cut to its first n code points, copied so that a cut
// string does not keep the rest in memory. It cuts between the units that
// ranging over s yields, so never inside a valid UTF-8 sequence.
func cutRunes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	count := 0
	for i := range s {
		if count == n {
			return strings.Clone(s[:i])
		}
		count++
	}
	return s
}

// isUUID matches the validator's "uuid" tag: 8-4-4-4-12 hex digits.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
			continue
		}
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// peekRequestID recovers a well-formed request_id from a frame that failed
// to decode, so that the error can name the request it concerns. A repeated
// request_id names none.
func peekRequestID(data []byte) string {
	var v peekedID
	if decodeObjectRef(data, &v, peekedIDFields) != nil || Validate(&v) != nil {
		return ""
	}
	return v.RequestID
}

type peekedID struct {
	RequestID string `json:"request_id" validate:"uuid"`
}

var peekedIDFields = fieldsOf[peekedID]()

// jsonErrText turns encoding/json errors into a sentence that names the field.
func jsonErrText(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return fmt.Sprintf("field %q has the wrong type (%s)", te.Field, te.Value)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		if strings.Contains(se.Error(), `'\n' in string literal`) || strings.Contains(se.Error(), `'\r' in string literal`) {
			// Almost always base64 from a tool that wraps its lines
			// (base64 without -w0).
			return fmt.Sprintf("a line break inside a string at byte %d: base64 must not contain line breaks (GNU base64 wraps at 76 characters; use base64 -w0)", se.Offset)
		}
		return fmt.Sprintf("%s at byte %d", se.Error(), se.Offset)
	}
	return err.Error()
}

func mustMarshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("protocol: encoding a frame cannot fail: " + err.Error())
	}
	return b
}

// EncodeChallenge builds the challenge frame for nonce.
func EncodeChallenge(nonce []byte) []byte {
	return mustMarshal(Challenge{Type: TypeChallenge, Nonce: nonce})
}

// EncodeIntroduced builds the frame that confirms an introduction.
func EncodeIntroduced(key PublicKey, sessionID string) []byte {
	return mustMarshal(Introduced{Type: TypeIntroduced, PublicKey: key, SessionID: sessionID})
}

// EncodeSignRequest builds a sign_request; expiresAt is sent in UTC, RFC 3339
// with milliseconds.
func EncodeSignRequest(requestID string, message []byte, description, requester string, expiresAt time.Time) []byte {
	b := make([]byte, 0, 125+len(requestID)+base64.StdEncoding.EncodedLen(len(message))+len(description)+len(requester))
	b = append(b, `{"type":"sign_request","request_id":`...)
	b = appendJSONString(b, requestID)
	b = append(b, `,"message":"`...)
	b = base64.StdEncoding.AppendEncode(b, message)
	b = append(b, `","description":`...)
	b = appendJSONString(b, description)
	b = append(b, `,"expires_at":"`...)
	b = expiresAt.UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z07:00")
	b = append(b, `","requester":`...)
	b = appendJSONString(b, requester)
	return append(b, '}')
}

// appendJSONString appends s as encoding/json would write it: verbatim
// when it needs no escape, else through json.Marshal.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return append(b, mustMarshal(s)...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// EncodeSignCancel builds a sign_cancel with one of the Cancel* reasons.
func EncodeSignCancel(requestID, reason string) []byte {
	return mustMarshal(SignCancel{Type: TypeSignCancel, RequestID: requestID, Reason: reason})
}

// EncodeError builds an error frame; requestID may be empty.
func EncodeError(code, message, requestID string) []byte {
	return mustMarshal(ErrorFrame{Type: TypeError, Code: code, Message: message, RequestID: requestID})
}

// FormatTime is the wire's time format: RFC 3339 in UTC with milliseconds.
func FormatTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z07:00") }

// UnknownRequest is the error for an answer to a request_id that is not
// pending for the connection that sent it.
func UnknownRequest(id string) *FrameError {
	return &FrameError{Code: CodeUnknownRequest, Message: "no request with this request_id is pending for this connection", RequestID: id}
}

// CheckAnswer checks a sign_response against the request it answers:
// nil when f echoes message and its signature verifies for key, else the
// invalid_signature error that says which of the two failed.
func CheckAnswer(key PublicKey, message []byte, f *SignResponse) *FrameError {
	if bad := CheckEcho(message, f); bad != nil {
		return bad
	}
	if !key.Verify(message, f.Signature) {
		return BadSignature(f.RequestID)
	}
	return nil
}

// CheckEcho is the part of CheckAnswer that needs no verification: f
// echoes message and its signature has the length of one. A node of a
// cluster that only forwards an answer to the node that verifies it
// checks this much at once.
func CheckEcho(message []byte, f *SignResponse) *FrameError {
	switch {
	case !bytes.Equal(f.Message, message):
		return &FrameError{Code: CodeInvalidSignature, Message: "message differs from the requested message", RequestID: f.RequestID}
	case len(f.Signature) != ed25519.SignatureSize:
		return BadSignature(f.RequestID)
	}
	return nil
}

// BadSignature is the error for an answer whose signature does not verify.
func BadSignature(id string) *FrameError {
	return &FrameError{Code: CodeInvalidSignature, Message: "signature does not verify against the public key and message", RequestID: id}
}
