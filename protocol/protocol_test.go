package protocol

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDecodeBase64(t *testing.T) {
	cases := []struct {
		in   string
		want []byte
		ok   bool
	}{
		{"", []byte{}, true},
		{"AA==", []byte{0}, true},
		{"AAE=", []byte{0, 1}, true},
		{"+/+/", []byte{0xfb, 0xff, 0xbf}, true},
		{"AA", nil, false},       // padding missing
		{"AB==", nil, false},     // stray bits in the last character
		{"-_-_", nil, false},     // URL alphabet
		{"AA==\n", nil, false},   // line break
		{"A\rA==", nil, false},   // carriage return
		{" AA==", nil, false},    // space
		{"AA==AA==", nil, false}, // padding in the middle
	}
	for _, tc := range cases {
		got, err := DecodeBase64(tc.in)
		if (err == nil) != tc.ok || (tc.ok && !bytes.Equal(got, tc.want)) {
			t.Errorf("DecodeBase64(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestPublicKey(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	k, err := ParsePublicKey(base64.StdEncoding.EncodeToString(pub))
	if err != nil {
		t.Fatal(err)
	}
	if k.String() != base64.StdEncoding.EncodeToString(pub) || !bytes.Equal(k.Bytes(), pub) {
		t.Fatal("round trip changed the key")
	}
	if want := "k:" + k.String()[:8]; k.ShortString() != want {
		t.Fatalf("short form %q, want %q", k.ShortString(), want)
	}
	if n := testing.AllocsPerRun(10, func() { _ = k.ShortString() }); n > 1 {
		t.Fatalf("ShortString allocates %v times", n)
	}
	msg := []byte("m")
	if !k.Verify(msg, ed25519.Sign(priv, msg)) || k.Verify(msg, make([]byte, 64)) || k.Verify(msg, []byte{1}) {
		t.Fatal("Verify is wrong")
	}
	if _, err := ParsePublicKey(base64.StdEncoding.EncodeToString(pub[:31])); !errors.Is(err, ErrKeyLength) {
		t.Fatalf("31 bytes: %v", err)
	}
	var back PublicKey
	data, _ := json.Marshal(k)
	if err := json.Unmarshal(data, &back); err != nil || back != k {
		t.Fatalf("JSON round trip: %v", err)
	}
	if err := json.Unmarshal([]byte(`"AA=="`), &back); err == nil {
		t.Fatal("a 1-byte key decoded")
	}
}

func TestIntroductionMessage(t *testing.T) {
	nonce := bytes.Repeat([]byte{7}, 32)
	got := IntroductionMessage(nonce)
	want := append([]byte("signing-relay/v1/introduction:"), nonce...)
	if !bytes.Equal(got, want) {
		t.Fatalf("got %q", got)
	}
	if !bytes.HasPrefix(got, []byte(ReservedPrefix)) {
		t.Fatal("introduction bytes must carry the reserved prefix")
	}
}

const validID = "6f1c0a4e-3f0b-4a4e-9a53-2f6c1b2d8e11"

func TestDecodeHolderFrame(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(make([]byte, 32))
	sig := base64.StdEncoding.EncodeToString(make([]byte, 64))
	cases := []struct {
		name, in, code, requestID string
		want                      any
	}{
		{"introduction", `{"type":"introduction","public_key":"` + key + `","signature":"` + sig + `"}`, "", "", &Introduction{}},
		{"sign_response", `{"type":"sign_response","request_id":"` + validID + `","message":"AA==","signature":"` + sig + `"}`, "", "", &SignResponse{}},
		{"sign_reject with reason", `{"type":"sign_reject","request_id":"` + validID + `","reason":"no"}`, "", "", &SignReject{}},
		{"sign_reject without reason", `{"type":"sign_reject","request_id":"` + validID + `"}`, "", "", &SignReject{}},
		{"unknown fields ignored", `{"type":"sign_reject","request_id":"` + validID + `","extra":{"a":[1]}}`, "", "", &SignReject{}},
		{"leading space", ` {"type":"sign_reject","request_id":"` + validID + `"}`, "", "", &SignReject{}},
		{"empty", ``, CodeMalformedFrame, "", nil},
		{"array", `[]`, CodeMalformedFrame, "", nil},
		{"string", `"x"`, CodeMalformedFrame, "", nil},
		{"truncated", `{"type":"sign_reject"`, CodeMalformedFrame, "", nil},
		{"trailing garbage", `{"type":"sign_reject","request_id":"` + validID + `"}x`, CodeMalformedFrame, "", nil},
		{"no type", `{"request_id":"` + validID + `"}`, CodeMalformedFrame, "", nil},
		{"type null", `{"type":null}`, CodeMalformedFrame, "", nil},
		{"type number", `{"type":1}`, CodeMalformedFrame, "", nil},
		{"unknown type", `{"type":"hello","request_id":"` + validID + `"}`, CodeUnknownType, validID, nil},
		{"server frame type", `{"type":"sign_request"}`, CodeUnknownType, "", nil},
		{"missing request_id", `{"type":"sign_reject"}`, CodeMalformedFrame, "", nil},
		{"bad request_id", `{"type":"sign_reject","request_id":"x"}`, CodeMalformedFrame, "", nil},
		{"request_id number", `{"type":"sign_reject","request_id":5}`, CodeMalformedFrame, "", nil},
		{"reason number", `{"type":"sign_reject","request_id":"` + validID + `","reason":5}`, CodeMalformedFrame, validID, nil},
		{"response missing signature", `{"type":"sign_response","request_id":"` + validID + `","message":"AA=="}`, CodeMalformedFrame, validID, nil},
		{"response short signature", `{"type":"sign_response","request_id":"` + validID + `","message":"AA==","signature":"AA=="}`, CodeMalformedFrame, validID, nil},
		{"response bad base64", `{"type":"sign_response","request_id":"` + validID + `","message":"AA","signature":"` + sig + `"}`, CodeMalformedFrame, validID, nil},
		{"response missing message", `{"type":"sign_response","request_id":"` + validID + `","signature":"` + sig + `"}`, CodeMalformedFrame, validID, nil},
		{"introduction short key", `{"type":"introduction","public_key":"AA==","signature":"` + sig + `"}`, CodeMalformedFrame, "", nil},
		{"introduction missing signature", `{"type":"introduction","public_key":"` + key + `"}`, CodeMalformedFrame, "", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeHolderFrame([]byte(tc.in))
			if tc.code == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				if got == nil || typeName(got) != typeName(tc.want) {
					t.Fatalf("got %T, want %T", got, tc.want)
				}
				return
			}
			var fe *FrameError
			if !errors.As(err, &fe) || fe.Code != tc.code || fe.RequestID != tc.requestID || fe.Message == "" {
				t.Fatalf("got %v (%#v), want code %s request_id %q", err, fe, tc.code, tc.requestID)
			}
			var frame map[string]any
			if json.Unmarshal(fe.Frame(), &frame) != nil || frame["type"] != TypeError || frame["code"] != tc.code {
				t.Fatalf("error frame %s", fe.Frame())
			}
		})
	}
}

func typeName(v any) string {
	switch v.(type) {
	case *Introduction:
		return "introduction"
	case *SignResponse:
		return "sign_response"
	case *SignReject:
		return "sign_reject"
	}
	return "?"
}

func TestDecodeSignBody(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(make([]byte, 32))
	ok := func(extra string) string { return `{"public_key":"` + key + `","message":"aGk="` + extra + `}` }
	for _, tc := range []struct {
		name, in string
		valid    bool
	}{
		{"minimal", ok(""), true},
		{"all fields", ok(`,"description":"d","timeout_ms":60000`), true},
		{"timeout null is default", ok(`,"timeout_ms":null`), true},
		{"unknown field", ok(`,"x":1`), true},
		{"timeout 0", ok(`,"timeout_ms":0`), false},
		{"timeout 60001 (the relay bounds it per mode)", ok(`,"timeout_ms":60001`), true},
		{"timeout over a day", ok(`,"timeout_ms":86400001`), false},
		{"wait false", ok(`,"wait":false,"wait_for_holder":true`), true},
		{"wait not a bool", ok(`,"wait":"no"`), false},
		{"reserved", `{"public_key":"` + key + `","message":"` + base64.StdEncoding.EncodeToString([]byte("signing-relay/x")) + `"}`, false},
		{"description 256 runes", ok(`,"description":"` + strings.Repeat("ü", 256) + `"`), true},
		{"description 257 runes", ok(`,"description":"` + strings.Repeat("ü", 257) + `"`), false},
		{"two objects", ok("") + ok(""), false},
		{"empty", "", false},
	} {
		b, err := DecodeSignBody([]byte(tc.in))
		if (err == nil) != tc.valid {
			t.Errorf("%s: err=%v, want valid=%v", tc.name, err, tc.valid)
		}
		if err == nil && b.Timeout(time.Minute) <= 0 {
			t.Errorf("%s: timeout %v", tc.name, b.Timeout(time.Minute))
		}
	}
}

func TestEncodeFrames(t *testing.T) {
	exp := time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.FixedZone("X", 3600))
	var req SignRequest
	if err := json.Unmarshal(EncodeSignRequest(validID, []byte{1, 2}, "d", "billing", exp), &req); err != nil {
		t.Fatal(err)
	}
	if req.Type != TypeSignRequest || req.RequestID != validID || !bytes.Equal(req.Message, []byte{1, 2}) ||
		req.ExpiresAt != "2026-01-02T02:04:05.006Z" || req.Requester != "billing" {
		t.Fatalf("sign_request %+v", req)
	}
	var e map[string]any
	_ = json.Unmarshal(EncodeError("c", "m", ""), &e)
	if _, has := e["request_id"]; has {
		t.Fatal("error frame without a request has a request_id field")
	}
}

// A 400 or an error frame names the field that is wrong.
func TestErrorsNameTheField(t *testing.T) {
	_, err := DecodeSignBody([]byte(`{"public_key":"AA","message":"aGk="}`))
	if err == nil || !strings.Contains(err.Error(), `"public_key" is not standard base64`) {
		t.Fatalf("body: %v", err)
	}
	_, err = DecodeHolderFrame([]byte(`{"type":"sign_response","request_id":"` + validID + `","message":"aGk=","signature":"x"}`))
	if err == nil || !strings.Contains(err.Error(), `"signature" is not standard base64`) {
		t.Fatalf("frame: %v", err)
	}
}

// The hand-built encoders write what encoding/json would.
func TestEncodersMatchEncodingJSON(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	k, _ := PublicKeyFromBytes(pub)
	msg := []byte("m\x00<&>")
	got := EncodeSignResult(validID, k, msg, ed25519.Sign(priv, msg))
	want, _ := json.Marshal(SignResult{RequestID: validID, PublicKey: k, Message: msg, Signature: ed25519.Sign(priv, msg)})
	if !bytes.Equal(got, want) {
		t.Fatalf("result\n got %s\nwant %s", got, want)
	}
	exp := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	for _, desc := range []string{"", "plain", "quote\" <tag> & \\ \n é \u2028"} {
		got := EncodeSignRequest(validID, msg, desc, desc, exp)
		want, _ := json.Marshal(SignRequest{Type: TypeSignRequest, RequestID: validID, Message: msg, Description: desc, ExpiresAt: FormatTime(exp), Requester: desc})
		if !bytes.Equal(got, want) {
			t.Fatalf("sign_request %q\n got %s\nwant %s", desc, got, want)
		}
	}
}

// CheckAnswer says which part of a bad answer is wrong; a good one passes.
func TestCheckAnswer(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	key, _ := PublicKeyFromBytes(pub)
	msg := []byte("m")
	good := &SignResponse{RequestID: "r", Message: msg, Signature: ed25519.Sign(priv, msg)}
	if e := CheckAnswer(key, msg, good); e != nil {
		t.Fatalf("good answer: %v", e)
	}
	other := &SignResponse{RequestID: "r", Message: []byte("x"), Signature: good.Signature}
	if e := CheckAnswer(key, msg, other); e == nil || e.Code != CodeInvalidSignature || !strings.Contains(e.Message, "message differs") {
		t.Fatalf("other message: %v", e)
	}
	forged := &SignResponse{RequestID: "r", Message: msg, Signature: make([]byte, 64)}
	if e := CheckAnswer(key, msg, forged); e == nil || e.RequestID != "r" || !strings.Contains(e.Message, "does not verify") {
		t.Fatalf("forged signature: %v", e)
	}
}

// A message base64-encoded with line breaks gets an answer that says so.
func TestBase64LineBreaksExplained(t *testing.T) {
	for _, body := range []string{
		"{\"public_key\":\"AAAA\",\"message\":\"aGVsbG8gd29y\nbGQ=\"}",
		"{\"public_key\":\"AAAA\",\"message\":\"aGVsbG8gd29y\r\nbGQ=\"}",
	} {
		_, err := DecodeSignBody([]byte(body))
		if err == nil || !strings.Contains(err.Error(), "base64 must not contain line breaks") {
			t.Fatalf("%q: %v", body, err)
		}
	}
}
