package protocol

import (
	"bytes"
	"errors"
	"fmt"
	"time"
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
	if err := Validate(&b); err != nil {
		return nil, err
	}
	if bytes.HasPrefix(b.Message, []byte(ReservedPrefix)) {
		return nil, ErrReservedMessage
	}
	return &b, nil
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
