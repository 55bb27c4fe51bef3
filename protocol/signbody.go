package protocol

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// SignBody is the JSON body of POST /sign. Its decoder reads the fields from
// the json tags (see DecodeSignBody): a new optional field needs only its
// struct field here, and, if it has a `validate` tag, the same check in
// plainlyValid.
type SignBody struct {
	PublicKey   Bytes  `json:"public_key" validate:"required,len=32"`
	Message     Bytes  `json:"message" validate:"required,min=1"`
	Description string `json:"description" validate:"max=256"`
	// TimeoutMS is bounded here by the most any relay allows; the relay
	// applies its own limit for the mode (sign.max_timeout, or
	// sign.max_async_timeout with Wait false).
	TimeoutMS *int64 `json:"timeout_ms" validate:"omitempty,min=1,max=86400000"`
	// Wait false makes the call asynchronous (202 and a resource).
	Wait *bool `json:"wait"`
	// WaitForHolder makes a request for a key with no live connection wait
	// for one instead of 404.
	WaitForHolder bool `json:"wait_for_holder"`
}

// Async reports whether the body asks for an asynchronous call.
func (b *SignBody) Async() bool { return b.Wait != nil && !*b.Wait }

// signBodyFields is the field table of SignBody.
var signBodyFields = fieldsOf[SignBody]()

// SignResult is the 200 body of POST /sign.
type SignResult struct {
	RequestID string    `json:"request_id"`
	PublicKey PublicKey `json:"public_key"`
	Message   Bytes     `json:"message"`
	Signature Bytes     `json:"signature"`
}

// EncodeSignResult builds the 200 body of POST /sign. Every field is a UUID
// or base64, so nothing needs escaping and it is built by appending, the
// relay's hottest encoding after the frames.
func EncodeSignResult(requestID string, key PublicKey, message, signature []byte) []byte {
	enc := base64.StdEncoding
	out := make([]byte, 0, 72+len(requestID)+enc.EncodedLen(len(message))+enc.EncodedLen(len(signature))+44)
	out = append(out, `{"request_id":"`...)
	out = append(out, requestID...)
	out = append(out, `","public_key":"`...)
	out = enc.AppendEncode(out, key.k[:])
	out = append(out, `","message":"`...)
	out = enc.AppendEncode(out, message)
	out = append(out, `","signature":"`...)
	out = enc.AppendEncode(out, signature)
	return append(out, `"}`...)
}

// ErrReservedMessage refuses messages that could pass for the relay's own.
var ErrReservedMessage = errors.New(`"message" must not start with the reserved prefix "` + ReservedPrefix + `"`)

// DecodeSignBody parses and validates a POST /sign body. Field names match
// exactly (after JSON unescaping) and a known field may appear only once,
// so that the relay and anything in front of it read the same body;
// unknown fields are ignored. It does not check the configured size limit;
// the caller maps that to 413.
func DecodeSignBody(body []byte) (*SignBody, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, errors.New("empty body; expected a JSON object")
	}
	b, ok := decodeSignBodyFast(body)
	if !ok {
		var err error
		if b, err = decodeSignBodySlow(body); err != nil {
			return nil, err
		}
	}
	if bytes.HasPrefix(b.Message, []byte(ReservedPrefix)) {
		return nil, ErrReservedMessage
	}
	return b, nil
}

// decodeSignBodyFast decodes a body that plainly satisfies the contract in
// one pass, without the validator's reflection, and says false for anything
// else. It never accepts what decodeSignBodySlow refuses.
func decodeSignBodyFast(body []byte) (*SignBody, bool) {
	b := new(SignBody)
	if !decodeObjectFast(body, b, signBodyFields) || !b.plainlyValid() {
		return nil, false
	}
	return b, true
}

// decodeSignBodySlow is the reference decoder of a body: it explains every
// refusal by field.
func decodeSignBodySlow(body []byte) (*SignBody, error) {
	b := new(SignBody)
	if err := decodeObjectRef(body, b, signBodyFields); err != nil {
		if errors.Is(err, errNotObject) {
			return nil, errors.New("body must be a JSON object")
		}
		return nil, err
	}
	if err := Validate(b); err != nil {
		return nil, err
	}
	return b, nil
}

// plainlyValid reports whether b passes every `validate` tag of SignBody.
func (b *SignBody) plainlyValid() bool {
	return len(b.PublicKey) == 32 && len(b.Message) >= 1 &&
		utf8.RuneCountInString(b.Description) <= MaxDescriptionRune &&
		(b.TimeoutMS == nil || (*b.TimeoutMS >= 1 && *b.TimeoutMS <= MaxAsyncTimeoutMS))
}

// Timeout returns the requested timeout, or def when none was given.
func (b *SignBody) Timeout(def time.Duration) time.Duration {
	if b.TimeoutMS == nil {
		return def
	}
	return time.Duration(*b.TimeoutMS) * time.Millisecond
}

// String summarises a body for logs without its message bytes.
func (b *SignBody) String() string {
	return fmt.Sprintf("key=%s bytes=%d", EncodeBase64(b.PublicKey)[:8], len(b.Message))
}
