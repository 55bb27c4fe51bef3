package protocol

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// normalize gives decoded frames a comparable form: the type field is set
// by the fast path and read from the input by the reference decoder.
func normalize(v any) any {
	switch f := v.(type) {
	case *Introduction:
		c := *f
		c.Type = TypeIntroduction
		return c
	case *SignResponse:
		c := *f
		c.Type = TypeSignResponse
		return c
	case *SignReject:
		c := *f
		c.Type = TypeSignReject
		return c
	}
	return v
}

// FuzzDecodeHolderFrame: whatever a key holder sends, decoding returns a
// frame or a *FrameError with a known code, and never panics.
func FuzzDecodeHolderFrame(f *testing.F) {
	for _, s := range []string{
		`{"type":"introduction","public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="}`,
		`{"type":"sign_response","request_id":"6f1c0a4e-3f0b-4a4e-9a53-2f6c1b2d8e11","message":"aGk=","signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="}`,
		`{"type":"sign_reject","request_id":"6f1c0a4e-3f0b-4a4e-9a53-2f6c1b2d8e11","reason":"no"}`,
		`{"type":"x"}`, `{}`, `[]`, `null`, `{"type":"sign_reject","request_id":5}`, "\xff\xfe",
	} {
		f.Add([]byte(s))
	}
	known := map[string]bool{CodeMalformedFrame: true, CodeUnknownType: true}
	f.Fuzz(func(t *testing.T, data []byte) {
		// The fast path may only accept what the reference decoder accepts,
		// with the same result.
		if fast, ok := decodeHolderFrameFast(bytes.TrimSpace(data)); ok {
			slow, err := decodeHolderFrameSlow(bytes.TrimSpace(data))
			if err != nil || !reflect.DeepEqual(normalize(fast), normalize(slow)) {
				t.Fatalf("fast path accepted %q as %+v; reference says %+v, %v", data, fast, slow, err)
			}
		}
		v, err := DecodeHolderFrame(data)
		if err != nil {
			var fe *FrameError
			if !errors.As(err, &fe) || !known[fe.Code] || v != nil {
				t.Fatalf("error %v (%T) with value %v", err, err, v)
			}
			_ = fe.Frame()
			return
		}
		switch f := v.(type) {
		case *Introduction:
			if len(f.PublicKey) != 32 || len(f.Signature) != 64 {
				t.Fatalf("accepted introduction with bad lengths: %+v", f)
			}
		case *SignResponse:
			if len(f.Signature) != 64 || f.Message == nil || len(f.RequestID) != 36 {
				t.Fatalf("accepted bad sign_response: %+v", f)
			}
		case *SignReject:
			if len(f.RequestID) != 36 {
				t.Fatalf("accepted bad sign_reject: %+v", f)
			}
		default:
			t.Fatalf("unexpected %T", v)
		}
	})
}

// FuzzDecodeSignBody: POST /sign bodies decode or fail cleanly; an
// accepted body always satisfies the contract's limits.
func FuzzDecodeSignBody(f *testing.F) {
	f.Add([]byte(`{"public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","message":"aGk=","timeout_ms":1000,"description":"d"}`))
	f.Add([]byte(`{"public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","message":"c2lnbmluZy1yZWxheS8="}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := DecodeSignBody(data)
		if err != nil {
			return
		}
		if len(b.PublicKey) != 32 || len(b.Message) == 0 || (b.TimeoutMS != nil && (*b.TimeoutMS < 1 || *b.TimeoutMS > MaxTimeoutMS)) {
			t.Fatalf("accepted %+v", b)
		}
	})
}
