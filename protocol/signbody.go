package protocol

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// SignBody is the JSON body of POST /sign.
type SignBody struct {
	PublicKey   Bytes  `json:"public_key" validate:"required,len=32"`
	Message     Bytes  `json:"message" validate:"required,min=1"`
	Description string `json:"description" validate:"max=256"`
	TimeoutMS   *int64 `json:"timeout_ms" validate:"omitempty,min=1,max=60000"`
}

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

// DecodeSignBody parses and validates a POST /sign body. It does not check
// the configured size limit; the caller maps that to 413.
func DecodeSignBody(body []byte) (*SignBody, error) {
	var b SignBody
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, errors.New("empty body; expected a JSON object")
	}
	if err := decodeInto(body, &b); err != nil {
		return nil, err
	}
	// The validator's tags, checked by hand: a valid body skips its
	// reflection, and only a doubtful one is run through it for the message.
	if !b.plainlyValid() {
		if err := Validate(&b); err != nil {
			return nil, err
		}
	}
	if bytes.HasPrefix(b.Message, []byte(ReservedPrefix)) {
		return nil, ErrReservedMessage
	}
	return &b, nil
}

// plainlyValid reports whether b passes every `validate` tag of SignBody.
func (b *SignBody) plainlyValid() bool {
	return len(b.PublicKey) == 32 && len(b.Message) >= 1 &&
		utf8.RuneCountInString(b.Description) <= MaxDescriptionRune &&
		(b.TimeoutMS == nil || (*b.TimeoutMS >= 1 && *b.TimeoutMS <= MaxTimeoutMS))
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
