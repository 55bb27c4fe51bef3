package protocol

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
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
		// Case variants are unknown fields.
		`{"TYPE":"sign_reject","request_id":"6f1c0a4e-3f0b-4a4e-9a53-2f6c1b2d8e11"}`,
		`{"type":"sign_reject","Request_ID":"x","request_id":"6f1c0a4e-3f0b-4a4e-9a53-2f6c1b2d8e11","Reason":5}`,
		// Duplicate known fields are refused; unknown ones may repeat.
		`{"type":"sign_reject","request_id":"6f1c0a4e-3f0b-4a4e-9a53-2f6c1b2d8e11","request_id":"6f1c0a4e-3f0b-4a4e-9a53-2f6c1b2d8e12"}`,
		`{"type":"sign_reject","request_id":"6f1c0a4e-3f0b-4a4e-9a53-2f6c1b2d8e11","reason":null,"reason":"x","x":1,"x":2}`,
		`{"type":"sign_reject","request_id":"6f1c0a4e-3f0b-4a4e-9a53-2f6c1b2d8e11","signature":"","signature":""}`,
		// Keys compare after unescaping.
		`{"typ\u0065":"sign_reject","request\u005fid":"6f1c0a4e-3f0b-4a4e-9a53-2f6c1b2d8e11"}`,
		`{"type":"sign_reject","\u0074ype":"sign_reject","request_id":"6f1c0a4e-3f0b-4a4e-9a53-2f6c1b2d8e11"}`,
		// A long reason is cut.
		`{"type":"sign_reject","request_id":"6f1c0a4e-3f0b-4a4e-9a53-2f6c1b2d8e11","reason":"` + strings.Repeat(`\u00fc\ud83d\ude00`, 200) + `"}`,
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
			if len(f.RequestID) != 36 || utf8.RuneCountInString(f.Reason) > MaxReasonRunes {
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
	f.Add([]byte(`{"Public_Key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","MESSAGE":"aGk=","message":"aGk=","public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`))
	f.Add([]byte(`{"public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","message":"aGk=","message":"eW8=","x":1,"x":2}`))
	f.Add([]byte(`{"public\u005fkey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","me\u0073sage":"aGk=","timeout_ms":null,"timeout_ms":5}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		// The fast path may only accept what the reference decoder accepts,
		// with the same result.
		if fast, ok := decodeSignBodyFast(data); ok {
			slow, err := decodeSignBodySlow(data)
			if err != nil || !reflect.DeepEqual(fast, slow) {
				t.Fatalf("fast path accepted %q as %+v; reference says %+v, %v", data, fast, slow, err)
			}
		}
		b, err := DecodeSignBody(data)
		if err != nil {
			return
		}
		if len(b.PublicKey) != 32 || len(b.Message) == 0 || (b.TimeoutMS != nil && (*b.TimeoutMS < 1 || *b.TimeoutMS > MaxAsyncTimeoutMS)) {
			t.Fatalf("accepted %+v", b)
		}
	})
}
