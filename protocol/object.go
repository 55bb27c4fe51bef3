package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The decoders of this package read a JSON object member by member instead
// of handing it to json.Unmarshal, because encoding/json matches field names
// case-insensitively ("TYPE" is "type") and lets a repeated field overwrite
// the first one. Both would let two readers of one frame disagree on what it
// says. Here a field name matches exactly, after JSON unescaping, and a field
// the target struct knows may appear only once; unknown fields are ignored
// and may repeat.
//
// Each object is described by an objectFields table built from its struct's
// json tags, so a new field of SignBody or of a frame needs no decoder code.
// Two readers share the table: decodeObjectFast, a one-pass scanner for the
// common case, and decodeObjectRef, the reference built on encoding/json's
// tokenizer, which explains every refusal. The fuzz targets check that the
// fast one accepts nothing the reference refuses, with the same result.

// objectFields lists the JSON fields of a struct type: their exact names, and
// the index of the struct field each one fills.
type objectFields struct {
	typ   reflect.Type
	names []string
	index []int
}

// fieldsOf builds the table of T, a struct whose fields all have plain ASCII
// json names (at most 64, so that a uint64 can record which were seen).
func fieldsOf[T any]() *objectFields {
	t := reflect.TypeFor[T]()
	fs := &objectFields{typ: t}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !f.IsExported() || name == "-" {
			continue
		}
		if name == "" || strings.ContainsAny(name, `"\`) || !isASCII(name) {
			panic("protocol: field " + t.Name() + "." + f.Name + " needs a plain ASCII json name")
		}
		fs.names = append(fs.names, name)
		fs.index = append(fs.index, i)
	}
	if len(fs.names) > 64 {
		panic("protocol: too many fields in " + t.Name())
	}
	return fs
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// lookup returns the position of the field named exactly key, or -1.
func (fs *objectFields) lookup(key []byte) int {
	for i, n := range fs.names {
		if string(key) == n {
			return i
		}
	}
	return -1
}

// field returns a pointer to field i of the struct that dst points to.
func (fs *objectFields) field(dst reflect.Value, i int) any {
	return dst.Field(fs.index[i]).Addr().Interface()
}

// target checks that dst is a pointer to the table's struct and returns the
// struct. A mismatch is a bug in this package.
func (fs *objectFields) target(dst any) reflect.Value {
	v := reflect.ValueOf(dst)
	if v.Kind() != reflect.Pointer || v.Elem().Type() != fs.typ {
		panic(fmt.Sprintf("protocol: decoding %T with the table of %s", dst, fs.typ))
	}
	return v.Elem()
}

// errNotObject is the reference decoder's answer to valid JSON that is not an
// object; callers say what they expected instead.
var errNotObject = errors.New("not a JSON object")

// duplicateField is the refusal of a known field that appears twice.
func duplicateField(name string) error { return fmt.Errorf("duplicate field %q", name) }

// decodeObjectRef is the reference decoder: it checks data with
// encoding/json, walks the object's members with json.Decoder's tokenizer,
// which unescapes every key, and decodes each known field's value with
// json.Unmarshal. Every error names the field it concerns.
func decodeObjectRef(data []byte, dst any, fs *objectFields) error {
	rv := fs.target(dst)
	if err := json.Unmarshal(data, new(json.RawMessage)); err != nil {
		return errors.New("invalid JSON: " + jsonErrText(err))
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return errNotObject
	}
	var seen uint64
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return errors.New("invalid JSON: " + jsonErrText(err))
		}
		key, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return errors.New("invalid JSON: " + jsonErrText(err))
		}
		i := fs.lookup([]byte(key))
		if i < 0 {
			continue
		}
		if seen&(1<<i) != 0 {
			return duplicateField(key)
		}
		seen |= 1 << i
		if err := json.Unmarshal(raw, fs.field(rv, i)); err != nil {
			return fieldError(key, err)
		}
	}
	return nil
}

// fieldError explains why the value of field name did not decode.
func fieldError(name string, err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("field %q has the wrong type (%s)", name, te.Value)
	}
	// The errors of Bytes.UnmarshalJSON, which read as a predicate.
	return fmt.Errorf("%q %s", name, err)
}

// maxFastDepth bounds the nesting that the fast decoder follows. Real frames
// and bodies do not nest at all; deeper input goes to the reference decoder.
const maxFastDepth = 64

// decodeObjectFast decodes data, a JSON object, into dst in one pass and
// reports whether it did. It validates the syntax of the whole input as it
// goes, matches keys exactly, and returns false for anything doubtful (a
// syntax error, a repeated known field, a value of the wrong type, deep
// nesting), leaving the explanation to decodeObjectRef. A false leaves dst
// partly filled.
func decodeObjectFast(data []byte, dst any, fs *objectFields) bool {
	rv := fs.target(dst)
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return false
	}
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		return skipSpace(data, i+1) == len(data)
	}
	var seen uint64
	for {
		if i >= len(data) || data[i] != '"' {
			return false
		}
		keyStart := i
		keyEnd, keyFlags, ok := scanString(data, i)
		if !ok {
			return false
		}
		key := data[keyStart+1 : keyEnd-1]
		i = skipSpace(data, keyEnd)
		if i >= len(data) || data[i] != ':' {
			return false
		}
		i = skipSpace(data, i+1)
		start := i
		var valFlags strFlags
		if i < len(data) && data[i] == '"' {
			i, valFlags, ok = scanString(data, i)
		} else {
			i, ok = skipValue(data, i, 1)
		}
		if !ok {
			return false
		}
		f := -1
		if keyFlags&strEscaped == 0 {
			f = fs.lookup(key)
		} else {
			var k string
			if json.Unmarshal(data[keyStart:keyEnd], &k) != nil {
				// Unreachable: a key the scanner accepted unescapes.
				return false
			}
			f = fs.lookup([]byte(k))
		}
		if f >= 0 {
			if seen&(1<<f) != 0 {
				return false
			}
			seen |= 1 << f
			if !decodeValueFast(data[start:i], valFlags, fs.field(rv, f)) {
				return false
			}
		}
		i = skipSpace(data, i)
		if i >= len(data) {
			return false
		}
		switch data[i] {
		case ',':
			i = skipSpace(data, i+1)
		case '}':
			return skipSpace(data, i+1) == len(data)
		default:
			return false
		}
	}
}

// decodeValueFast stores raw, one syntactically valid JSON value, into ptr
// as json.Unmarshal would, and reports whether json.Unmarshal would succeed.
// flags describe raw when it is a string. Types without a shortcut are
// passed to json.Unmarshal.
func decodeValueFast(raw []byte, flags strFlags, ptr any) bool {
	null := raw[0] == 'n'
	switch p := ptr.(type) {
	case *string:
		switch {
		case null:
			return true
		case raw[0] != '"':
			return false
		case flags == 0 || flags == strNonASCII && utf8.Valid(raw):
			// No escape and valid UTF-8: the string is its own content.
			*p = string(raw[1 : len(raw)-1])
			return true
		}
	case *Bytes:
		return p.UnmarshalJSON(raw) == nil
	case **int64:
		switch {
		case null:
			*p = nil
			return true
		case raw[0] != '-' && (raw[0] < '0' || raw[0] > '9'):
			return false
		}
		// A JSON number parses as an int64 exactly when it is an integer
		// without fraction or exponent that fits, as for encoding/json.
		n, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil {
			return false
		}
		*p = &n
		return true
	case *bool:
		switch raw[0] {
		case 'n':
			return true
		case 't', 'f':
			*p = raw[0] == 't'
			return true
		}
		return false
	case **bool:
		switch raw[0] {
		case 'n':
			*p = nil
			return true
		case 't', 'f':
			v := raw[0] == 't'
			*p = &v
			return true
		}
		return false
	}
	return json.Unmarshal(raw, ptr) == nil
}

// strFlags describe a scanned JSON string.
type strFlags uint8

const (
	strEscaped  strFlags = 1 << iota // holds a backslash escape
	strNonASCII                      // holds a byte >= 0x80, maybe invalid UTF-8
)

// strPlain marks the bytes that stand for themselves inside a JSON string.
var strPlain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// scanString checks the JSON string that starts at data[i] (a quote) and
// returns the index just past its closing quote.
func scanString(data []byte, i int) (end int, flags strFlags, ok bool) {
	i++
	for {
		for i < len(data) && strPlain[data[i]] {
			i++
		}
		if i >= len(data) {
			return 0, 0, false
		}
		switch c := data[i]; {
		case c == '"':
			return i + 1, flags, true
		case c == '\\':
			flags |= strEscaped
			if i+1 >= len(data) {
				return 0, 0, false
			}
			switch data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(data) || !isHex(data[i+2]) || !isHex(data[i+3]) || !isHex(data[i+4]) || !isHex(data[i+5]) {
					return 0, 0, false
				}
				i += 6
			default:
				return 0, 0, false
			}
		case c < 0x20:
			return 0, 0, false
		default: // c >= 0x80; encoding/json accepts invalid UTF-8 here
			flags |= strNonASCII
			i++
		}
	}
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// skipSpace returns the index of the first byte at or after i that is not
// JSON whitespace.
func skipSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipValue checks the JSON value that starts at data[i], at nesting depth
// depth, and returns the index just past it. It does not skip whitespace
// after the value.
func skipValue(data []byte, i, depth int) (int, bool) {
	if i >= len(data) {
		return 0, false
	}
	switch c := data[i]; c {
	case '"':
		end, _, ok := scanString(data, i)
		return end, ok
	case '{', '[':
		if depth >= maxFastDepth {
			return 0, false
		}
		closer := byte('}')
		if c == '[' {
			closer = ']'
		}
		i = skipSpace(data, i+1)
		if i < len(data) && data[i] == closer {
			return i + 1, true
		}
		for {
			var ok bool
			if c == '{' {
				if i >= len(data) || data[i] != '"' {
					return 0, false
				}
				if i, _, ok = scanString(data, i); !ok {
					return 0, false
				}
				i = skipSpace(data, i)
				if i >= len(data) || data[i] != ':' {
					return 0, false
				}
				i = skipSpace(data, i+1)
			}
			if i, ok = skipValue(data, i, depth+1); !ok {
				return 0, false
			}
			i = skipSpace(data, i)
			if i >= len(data) {
				return 0, false
			}
			switch data[i] {
			case ',':
				i = skipSpace(data, i+1)
			case closer:
				return i + 1, true
			default:
				return 0, false
			}
		}
	case 't':
		return skipLiteral(data, i, "true")
	case 'f':
		return skipLiteral(data, i, "false")
	case 'n':
		return skipLiteral(data, i, "null")
	}
	return skipNumber(data, i)
}

func skipLiteral(data []byte, i int, lit string) (int, bool) {
	if !bytes.HasPrefix(data[i:], []byte(lit)) {
		return 0, false
	}
	return i + len(lit), true
}

// skipNumber checks -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? at data[i].
func skipNumber(data []byte, i int) (int, bool) {
	if i < len(data) && data[i] == '-' {
		i++
	}
	switch {
	case i >= len(data):
		return 0, false
	case data[i] == '0':
		i++
	case isDigit(data[i]):
		for i < len(data) && isDigit(data[i]) {
			i++
		}
	default:
		return 0, false
	}
	if i < len(data) && data[i] == '.' {
		i++
		if i >= len(data) || !isDigit(data[i]) {
			return 0, false
		}
		for i < len(data) && isDigit(data[i]) {
			i++
		}
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		if i >= len(data) || !isDigit(data[i]) {
			return 0, false
		}
		for i < len(data) && isDigit(data[i]) {
			i++
		}
	}
	return i, true
}
