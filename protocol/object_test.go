package protocol

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

var (
	testKey = base64.StdEncoding.EncodeToString(make([]byte, 32))
	testSig = base64.StdEncoding.EncodeToString(make([]byte, 64))
)

// decodeBoth runs the fast and the reference decoder on a frame and fails
// when the fast one accepts what the reference refuses or reads otherwise.
func decodeBoth(t *testing.T, in string) (any, error) {
	t.Helper()
	slow, err := decodeHolderFrameSlow([]byte(in))
	if fast, ok := decodeHolderFrameFast([]byte(in)); ok {
		if err != nil || !reflect.DeepEqual(normalize(fast), normalize(slow)) {
			t.Fatalf("%s: fast path gives %+v, reference %+v, %v", in, fast, slow, err)
		}
	}
	got, err2 := DecodeHolderFrame([]byte(in))
	if (err == nil) != (err2 == nil) {
		t.Fatalf("%s: DecodeHolderFrame says %v, the reference %v", in, err2, err)
	}
	return got, err2
}

func wantFrameError(t *testing.T, in, message string) {
	t.Helper()
	_, err := decodeBoth(t, in)
	var fe *FrameError
	if !errors.As(err, &fe) || fe.Code != CodeMalformedFrame || !strings.Contains(fe.Message, message) {
		t.Fatalf("%s: got %v, want %s containing %q", in, err, CodeMalformedFrame, message)
	}
}

// Field names match exactly: a case variant is an unknown field.
func TestFrameFieldNamesAreExact(t *testing.T) {
	wantFrameError(t, `{"TYPE":"sign_reject","request_id":"`+validID+`"}`, `missing string field "type"`)
	wantFrameError(t, `{"Type":"sign_reject","request_id":"`+validID+`"}`, `missing string field "type"`)
	wantFrameError(t, `{"type":"sign_reject","Request_ID":"`+validID+`"}`, `missing field "request_id"`)
	wantFrameError(t, `{"type":"introduction","Public_Key":"`+testKey+`","signature":"`+testSig+`"}`, `missing field "public_key"`)
	wantFrameError(t, `{"type":"sign_response","request_id":"`+validID+`","MESSAGE":"aGk=","signature":"`+testSig+`"}`, `missing field "message"`)

	// The variant is ignored like any unknown field, even next to the real one.
	v, err := decodeBoth(t, `{"type":"sign_reject","request_id":"`+validID+`","Reason":"ignored","REQUEST_ID":5}`)
	if err != nil || v.(*SignReject).Reason != "" || v.(*SignReject).RequestID != validID {
		t.Fatalf("got %+v, %v", v, err)
	}
	v, err = decodeBoth(t, `{"Type":"x","type":"sign_reject","TYPE":1,"request_id":"`+validID+`"}`)
	if err != nil || v.(*SignReject).RequestID != validID {
		t.Fatalf("got %+v, %v", v, err)
	}
	// Unicode case folding does not apply either (K is KELVIN SIGN).
	wantFrameError(t, `{"type":"introduction","public_\u212aey":"`+testKey+`","signature":"`+testSig+`"}`, `missing field "public_key"`)
}

// A known field that appears twice refuses the frame, whatever the values.
func TestFrameDuplicateFields(t *testing.T) {
	intro := `"public_key":"` + testKey + `","signature":"` + testSig + `"`
	resp := `"request_id":"` + validID + `","message":"aGk=","signature":"` + testSig + `"`
	rej := `"request_id":"` + validID + `","reason":"no"`
	for _, tc := range []struct{ in, field string }{
		{`{"type":"sign_reject","type":"sign_reject",` + rej + `}`, "type"},
		{`{"type":"sign_reject","type":"introduction",` + rej + `}`, "type"},
		{`{"type":"introduction",` + intro + `,"public_key":"` + base64.StdEncoding.EncodeToString(make([]byte, 31)) + `"}`, "public_key"},
		{`{"type":"introduction",` + intro + `,"signature":"` + testSig + `"}`, "signature"},
		{`{"type":"sign_response",` + resp + `,"request_id":"` + validID + `"}`, "request_id"},
		{`{"type":"sign_response",` + resp + `,"message":"aGk="}`, "message"},
		{`{"type":"sign_response",` + resp + `,"signature":"` + testSig + `"}`, "signature"},
		{`{"type":"sign_reject",` + rej + `,"request_id":"6f1c0a4e-3f0b-4a4e-9a53-2f6c1b2d8e12"}`, "request_id"},
		{`{"type":"sign_reject",` + rej + `,"reason":"yes"}`, "reason"},
		{`{"type":"sign_reject","reason":null,` + rej + `}`, "reason"},                         // a null counts
		{`{"type":"sign_reject",` + rej + `,"re\u0061son":"yes"}`, "reason"},                   // after unescaping
		{`{"type":"sign_reject",` + rej + `,"request_id":5}`, "request_id"},                    // before its type
		{`{"\u0074ype":"sign_reject","type":"sign_reject",` + rej + `}`, "type"},               // in the envelope
		{`{"type":"sign_response",` + resp + `,"message":"AA","x":1}`, "message"},              // before its base64
		{`{"type":"introduction",` + intro + `,"public_key":"` + testKey + `"}`, "public_key"}, // equal values
	} {
		wantFrameError(t, tc.in, `duplicate field "`+tc.field+`"`)
	}
	// A duplicated request_id names no request.
	_, err := DecodeHolderFrame([]byte(`{"type":"sign_reject","request_id":"` + validID + `","request_id":"` + validID + `"}`))
	if fe := (*FrameError)(nil); !errors.As(err, &fe) || fe.RequestID != "" {
		t.Fatalf("got %#v", err)
	}
	// Another duplicate does, when the request_id is readable.
	_, err = DecodeHolderFrame([]byte(`{"type":"sign_reject",` + rej + `,"reason":"again"}`))
	if fe := (*FrameError)(nil); !errors.As(err, &fe) || fe.RequestID != validID {
		t.Fatalf("got %#v", err)
	}
}

// Unknown fields may repeat, including fields that only another frame type
// knows, and nested objects may repeat keys.
func TestFrameRepeatedUnknownFields(t *testing.T) {
	for _, in := range []string{
		`{"type":"sign_reject","request_id":"` + validID + `","x":1,"x":2,"x":{"a":1,"a":2}}`,
		`{"type":"sign_reject","request_id":"` + validID + `","signature":"!","signature":5}`,
		`{"type":"sign_reject","request_id":"` + validID + `","message":"aGk=","message":"aGk="}`,
		`{"type":"introduction","public_key":"` + testKey + `","signature":"` + testSig + `","request_id":1,"request_id":2}`,
	} {
		if _, err := decodeBoth(t, in); err != nil {
			t.Errorf("%s: %v", in, err)
		}
	}
}

// Keys are compared after unescaping.
func TestFrameEscapedKeys(t *testing.T) {
	v, err := decodeBoth(t, `{"typ\u0065":"sign_reject","request\u005fid":"`+validID+`","\u0072\u0065\u0061\u0073\u006f\u006e":"n\u00f6"}`)
	if err != nil {
		t.Fatal(err)
	}
	if r := v.(*SignReject); r.RequestID != validID || r.Reason != "nö" {
		t.Fatalf("got %+v", r)
	}
	// An escape that makes an unknown name stays unknown.
	wantFrameError(t, `{"typ\u0045":"sign_reject","request_id":"`+validID+`"}`, `missing string field "type"`)
}

// The whole input must still be valid JSON, in the fields that are ignored
// too: the fast scanner and the reference agree with json.Valid.
func TestFrameSyntax(t *testing.T) {
	core := `"type":"sign_reject","request_id":"` + validID + `"`
	for _, x := range []string{
		`1`, `-0`, `-0.5e+7`, `1E9`, `0.0`, `true`, `false`, `null`, `""`, `"\"\\\/\b\f\n\r\t\u00e9\uD83D\uDE00"`,
		`"\ud800"`, "\"\xff\xfe\"", `[]`, `{}`, `[1,[2,[3,{"a":[]}]]]`, `{"a":{"b":{"c":null}}}`, ` [ 1 , 2 ] `,
		strings.Repeat("[", 100) + strings.Repeat("]", 100),
		// invalid:
		`01`, `1.`, `.5`, `-`, `1e`, `+1`, `0x1`, `NaN`, `tru`, `nul`, `True`, `"\q"`, `"\u12"`, `"\u12G4"`, "\"a\tb\"", "\"\x00\"",
		`[1,]`, `[,1]`, `{"a"}`, `{"a":}`, `{,}`, `{"a":1,}`, `{1:2}`, `'x'`, `[1}`, `{"a":1]`,
		strings.Repeat("[", 100) + strings.Repeat("]", 99),
	} {
		in := `{` + core + `,"x":` + x + `}`
		_, err := decodeBoth(t, in)
		if valid := json.Valid([]byte(in)); (err == nil) != valid {
			t.Errorf("%s: err=%v, json.Valid=%v", in, err, valid)
		}
	}
	for _, in := range []string{
		`{` + core + `}x`, `{` + core + `}{}`, `{` + core + `,}`, `{` + core, `{` + core + `,"x"}`,
		`{` + core + ` "x":1}`, `{` + core + `}` + "\x00",
	} {
		wantFrameError(t, in, "invalid JSON")
	}
	// Whitespace of JSON is allowed anywhere between tokens.
	if _, err := decodeBoth(t, "{ \"type\" :\t\"sign_reject\" ,\r\n\"request_id\"\n:\""+validID+"\" }"); err != nil {
		t.Fatal(err)
	}
}

// The messages name the field, as before the exact decoder.
func TestFrameErrorMessages(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"type":"sign_reject","request_id":"` + validID + `","reason":5}`, `field "reason" has the wrong type (number)`},
		{`{"type":"sign_reject","request_id":5}`, `field "request_id" has the wrong type (number)`},
		{`{"type":"sign_reject","request_id":"x"}`, `"request_id" must be a UUID`},
		{`{"type":1}`, `field "type" has the wrong type (number)`},
		{`{"type":null}`, `missing string field "type"`},
		{`{"type":"introduction","public_key":"AA","signature":"` + testSig + `"}`, `"public_key" is not standard base64 with padding`},
		{`{"type":"introduction","public_key":5,"signature":"` + testSig + `"}`, `"public_key" must be a base64 string`},
		{`{"type":"introduction","public_key":"AA==","signature":"` + testSig + `"}`, `"public_key" must decode to exactly 32 bytes`},
		{`{"type":"sign_response","request_id":"` + validID + `","signature":"` + testSig + `"}`, `missing field "message"`},
		{`{"type":"sign_reject"`, `invalid JSON: unexpected end of JSON input`},
	} {
		wantFrameError(t, tc.in, tc.want)
	}
}

// A reason is cut to MaxReasonRunes code points, on both paths.
func TestRejectReasonCut(t *testing.T) {
	frame := func(reason string) string {
		b, _ := json.Marshal(reason)
		return `{"type":"sign_reject","request_id":"` + validID + `","reason":` + string(b) + `}`
	}
	for _, tc := range []struct {
		name, reason, want string
	}{
		{"short", "no", "no"},
		{"256 ASCII", strings.Repeat("a", 256), strings.Repeat("a", 256)},
		{"257 ASCII", strings.Repeat("a", 257), strings.Repeat("a", 256)},
		{"256 two-byte", strings.Repeat("ü", 256), strings.Repeat("ü", 256)},
		{"257 two-byte", strings.Repeat("ü", 257), strings.Repeat("ü", 256)},
		{"four-byte", strings.Repeat("😀", 300), strings.Repeat("😀", 256)},
		{"mixed", "a" + strings.Repeat("€", 300), "a" + strings.Repeat("€", 255)},
		{"200 KB", strings.Repeat("x", 200<<10), strings.Repeat("x", 256)},
		{"escaped", strings.Repeat("\n\"", 200), strings.Repeat("\n\"", 128)},
	} {
		for _, path := range []string{"decode", "slow"} {
			var v any
			var err error
			if path == "slow" {
				v, err = decodeHolderFrameSlow([]byte(frame(tc.reason)))
			} else {
				v, err = decodeBoth(t, frame(tc.reason))
			}
			if err != nil {
				t.Fatalf("%s %s: %v", tc.name, path, err)
			}
			got := v.(*SignReject).Reason
			if got != tc.want || !utf8.ValidString(got) || utf8.RuneCountInString(got) > MaxReasonRunes {
				t.Errorf("%s %s: got %d runes (%d bytes), want %d runes", tc.name, path,
					utf8.RuneCountInString(got), len(got), utf8.RuneCountInString(tc.want))
			}
		}
	}
}

func TestCutRunes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"", 3, ""}, {"abc", 3, "abc"}, {"abcd", 3, "abc"}, {"äöüß", 3, "äöü"}, {"äöü", 3, "äöü"},
		{"a\xffbc", 3, "a\xffb"}, // an invalid byte counts as one, and is never split
		{"\xe2\x82", 1, "\xe2"},
	} {
		if got := cutRunes(tc.in, tc.n); got != tc.want {
			t.Errorf("cutRunes(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}

func signBodyErr(t *testing.T, in string) error {
	t.Helper()
	slow, err := decodeSignBodySlow([]byte(in))
	if fast, ok := decodeSignBodyFast([]byte(in)); ok && (err != nil || !reflect.DeepEqual(fast, slow)) {
		t.Fatalf("%s: fast path gives %+v, reference %+v, %v", in, fast, slow, err)
	}
	_, err2 := DecodeSignBody([]byte(in))
	if err == nil && err2 != nil && !errors.Is(err2, ErrReservedMessage) || err != nil && err2 == nil {
		t.Fatalf("%s: DecodeSignBody says %v, the reference %v", in, err2, err)
	}
	return err2
}

func TestSignBodyStrict(t *testing.T) {
	body := func(members string) string { return `{` + members + `}` }
	pk := `"public_key":"` + testKey + `"`
	msg := `"message":"aGk="`
	for _, tc := range []struct{ name, in, want string }{
		// exact names
		{"case variant key", body(`"Public_Key":"` + testKey + `",` + msg), `missing field "public_key"`},
		{"upper message", body(pk + `,"MESSAGE":"aGk="`), `missing field "message"`},
		{"timeout variant ignored", body(pk + `,` + msg + `,"Timeout_MS":0`), ""},
		{"escaped key", body(`"public\u005fkey":"` + testKey + `","me\u0073sage":"aGk="`), ""},
		// duplicates
		{"duplicate public_key", body(pk + `,` + msg + `,` + pk), `duplicate field "public_key"`},
		{"duplicate message", body(pk + `,` + msg + `,"message":"eW8="`), `duplicate field "message"`},
		{"duplicate description", body(pk + `,` + msg + `,"description":"a","description":"b"`), `duplicate field "description"`},
		{"duplicate timeout_ms", body(pk + `,` + msg + `,"timeout_ms":1000,"timeout_ms":null`), `duplicate field "timeout_ms"`},
		{"duplicate escaped", body(pk + `,` + msg + `,"m\u0065ssage":"aGk="`), `duplicate field "message"`},
		{"unknown repeats", body(pk + `,` + msg + `,"x":1,"x":[2]`), ""},
		// messages that name the field
		{"bad base64", body(`"public_key":"AA",` + msg), `"public_key" is not standard base64 with padding`},
		{"timeout string", body(pk + `,` + msg + `,"timeout_ms":"5"`), `field "timeout_ms" has the wrong type (string)`},
		{"timeout float", body(pk + `,` + msg + `,"timeout_ms":1e3`), `field "timeout_ms" has the wrong type (number 1e3)`},
		{"timeout range", body(pk + `,` + msg + `,"timeout_ms":86400001`), `"timeout_ms" must be at most 86400000`},
		{"missing message", body(pk), `missing field "message"`},
		{"empty message", body(pk + `,"message":""`), `"message" must not be empty`},
		{"description type", body(pk + `,` + msg + `,"description":1`), `field "description" has the wrong type (number)`},
		{"trailing garbage", body(pk+`,`+msg) + `x`, `invalid JSON`},
		{"two objects", body(pk+`,`+msg) + body(pk+`,`+msg), `invalid JSON`},
		{"array", `[]`, `body must be a JSON object`},
		{"null", `null`, `body must be a JSON object`},
		{"whitespace around", " \n" + body(pk+`,`+msg) + "\t\r\n", ""},
	} {
		err := signBodyErr(t, tc.in)
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
}

// decodeObjectFast handles every value type the decoders may meet, and the
// types without a shortcut, exactly as json.Unmarshal via the reference.
func TestDecodeObjectKinds(t *testing.T) {
	for _, in := range []string{
		`{"s":"x","b":"AA==","i":-5,"f":true,"p":false,"sp":"y","n":[1,2],"m":{"a":1}}`,
		`{"s":null,"b":null,"i":null,"f":null,"p":null,"sp":null,"n":null,"m":null}`,
		`{"s":"\u00e9\n","b":"A\u0041==","i":9223372036854775807,"f":false,"p":true}`,
		"{\"s\":\"\xff\"}", `{"s":"é"}`, `{"i":-0}`, `{"X":1,"-":2}`, `{}`,
		// refused by both:
		`{"s":1}`, `{"b":1}`, `{"i":1.5}`, `{"i":9223372036854775808}`, `{"i":"1"}`, `{"f":1}`, `{"p":"true"}`,
		`{"sp":1}`, `{"n":{}}`, `{"m":[]}`, `{"n":[1],"n":[2]}`, `{"f":true,"f":true}`,
	} {
		ok, err := checkDecodeObject([]byte(in))
		if e := (*objectMismatch)(nil); errors.As(err, &e) {
			t.Error(err)
		} else if !ok && err == nil {
			t.Errorf("%s: the fast decoder refuses what the reference accepts", in)
		}
	}
}

// allKinds has a field of every type the decoders handle, with and without
// a shortcut in decodeValueFast.
type allKinds struct {
	S  string         `json:"s"`
	B  Bytes          `json:"b"`
	I  *int64         `json:"i"`
	F  bool           `json:"f"`
	P  *bool          `json:"p"`
	SP *string        `json:"sp"`
	N  []int          `json:"n"`
	M  map[string]int `json:"m"`
	_  int
	X  int `json:"-"`
}

var allKindsFields = fieldsOf[allKinds]()

type objectMismatch struct{ msg string }

func (e *objectMismatch) Error() string { return e.msg }

// checkDecodeObject decodes data into allKinds with the fast and the
// reference decoder, and with encoding/json. It reports the fast result and
// the reference error, or an *objectMismatch when the fast decoder accepts
// what the reference refuses or reads otherwise, or when the reference,
// having accepted, disagrees with encoding/json on input whose keys
// encoding/json reads the same way (see plainKeys).
func checkDecodeObject(data []byte) (bool, error) {
	var fast, ref, viaJSON allKinds
	ok := decodeObjectFast(data, &fast, allKindsFields)
	err := decodeObjectRef(data, &ref, allKindsFields)
	if ok && (err != nil || !reflect.DeepEqual(fast, ref)) {
		return ok, &objectMismatch{fmt.Sprintf("%q: fast %+v, reference %+v, %v", data, fast, ref, err)}
	}
	if err == nil && plainKeys(data) {
		if jsonErr := json.Unmarshal(data, &viaJSON); jsonErr != nil || !reflect.DeepEqual(ref, viaJSON) {
			return ok, &objectMismatch{fmt.Sprintf("%q: reference %+v, encoding/json %+v, %v", data, ref, viaJSON, jsonErr)}
		}
	}
	return ok, err
}

// plainKeys reports whether data's top-level keys are distinct and none
// folds to a field name of allKinds without being it, so that encoding/json's
// case-insensitive, last-wins matching gives the exact reading.
func plainKeys(data []byte) bool {
	dec := json.NewDecoder(strings.NewReader(string(data)))
	if _, err := dec.Token(); err != nil {
		return false
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		if dec.Decode(new(json.RawMessage)) != nil {
			return false
		}
		k := tok.(string)
		if seen[k] {
			return false
		}
		seen[k] = true
		for _, n := range append(allKindsFields.names, "x") { // "x": the json:"-" field's Go name
			if k != n && strings.EqualFold(k, n) {
				return false
			}
		}
	}
	return true
}

// FuzzDecodeObject: the fast object decoder accepts only what the reference
// accepts, with the same result, for every value type, and the reference
// reads as encoding/json where their rules coincide.
func FuzzDecodeObject(f *testing.F) {
	for _, s := range []string{
		`{"s":"x","b":"AA==","i":-5,"f":true,"p":false,"sp":"y","n":[1,2],"m":{"a":1}}`,
		`{"s":null,"b":null,"i":null,"f":null,"p":null,"sp":null,"n":null,"m":null}`,
		`{"S":"case","s":"exact"}`, `{"s":"a","s":"b"}`, `{"\u0073":"escaped"}`, `{"i":1e3}`,
		`{"s":"\ud83d\ude00","x":[{"y":-0.1E-2}]}`, "{\"s\":\"\xff\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := checkDecodeObject(data); err != nil {
			if e := (*objectMismatch)(nil); errors.As(err, &e) {
				t.Fatal(err)
			}
		}
	})
}

// The fast decoder leaves deep nesting to the reference, which accepts it.
func TestDeepNesting(t *testing.T) {
	in := `{"type":"sign_reject","request_id":"` + validID + `","x":` + strings.Repeat("[", 500) + strings.Repeat("]", 500) + `}`
	if _, ok := decodeHolderFrameFast([]byte(in)); ok {
		t.Fatal("fast path followed 500 levels")
	}
	if _, err := DecodeHolderFrame([]byte(in)); err != nil {
		t.Fatal(err)
	}
}
