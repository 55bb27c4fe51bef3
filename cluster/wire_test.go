package cluster

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"testing"

	"github.com/signrelay/signrelay/protocol"
)

// wireSamples are messages of every type as the bus builds them.
func wireSamples() []*envelope {
	key := bytes.Repeat([]byte{7}, 32)
	id := "5f0c3c1e-9a43-4c1b-8f59-3b0f6a3d2c11"
	frame := []byte(`{"type":"sign_request","request_id":"5f0c3c1e-9a43-4c1b-8f59-3b0f6a3d2c11","message":"aGVsbG8=","description":"","expires_at":"2026-12-01T18:00:00.000Z"}`)
	return []*envelope{
		{T: msgDeliver, ID: id, Key: key, Node: "bench-a", Frame: frame, Expires: 1796148000000},
		{T: msgAttached, Node: "bench-b", Att: []attachment{{ID: id, Key: key, Sessions: []string{"s1", "s2"}}, {ID: "x", Key: key, Sessions: []string{"s3"}}}},
		{T: msgAnswer, ID: id, Key: key, Node: "bench-b", Session: "s1", Sessions: []string{"s1", "s2"}, Sig: bytes.Repeat([]byte{9}, 64)},
		{T: msgAnswer, ID: id, Key: key, Node: "bench-b", Session: "s2"},
		{T: msgReject, ID: id, Key: key, Node: "bench-b", Session: "s1", Reason: "user_declined"},
		{T: msgDetached, ID: id, Key: key, Node: "bench-b", Session: "s1"},
		{T: msgEnd, ID: id, Key: key, Node: "bench-a", Reason: "answered_elsewhere", WinNode: "bench-b", WinSess: "s1"},
		{T: msgHello, Key: key, Node: "bench-b"},
		{T: msgPing},
		{T: msgPing, Node: "bench-b", Refs: map[string][]byte{id: key, "other": key}},
		{T: msgPong, Node: "bench-a", Ended: map[string]endInfo{id: {Reason: "timeout"}, "other": {Reason: "answered_elsewhere", WinNode: "n", WinSess: "s"}}},
		{T: msgRefused, ID: id, Key: key, Node: "bench-a", Session: "s2", Reason: protocol.CodeInvalidSignature},
		{T: msgDeliver, Expires: -5},
	}
}

func TestWireRoundTrip(t *testing.T) {
	for _, e := range wireSamples() {
		data := appendEnvelope(nil, e)
		var got envelope
		if err := decodeEnvelope(data, &got); err != nil {
			t.Fatalf("%+v: %v", e, err)
		}
		if !reflect.DeepEqual(&got, e) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, *e)
		}
		// Every cut of a message is refused, not misread.
		for n := range len(data) {
			if decodeEnvelope(data[:n], &got) == nil {
				t.Fatalf("%+v: a message cut at %d of %d bytes decoded", e, n, len(data))
			}
		}
		if decodeEnvelope(append(data[:len(data):len(data)], 0), &got) == nil {
			t.Fatalf("%+v: trailing byte accepted", e)
		}
	}
}

func TestWireRefusesHostile(t *testing.T) {
	huge := binary.AppendUvarint(nil, 1<<62)
	for name, data := range map[string][]byte{
		"empty":         nil,
		"json":          []byte(`{"t":"deliver"}`),
		"version 2":     {2, byte(msgDeliver)},
		"type 0":        {wireVersion, 0},
		"unknown type":  {wireVersion, byte(msgLast) + 1},
		"huge id":       append([]byte{wireVersion, byte(msgDeliver)}, huge...),
		"huge sessions": append([]byte{wireVersion, byte(msgDeliver), 0, 0, 0, 0}, huge...),
		"bad varint":    append([]byte{wireVersion, byte(msgDeliver)}, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
	} {
		var e envelope
		if decodeEnvelope(data, &e) == nil {
			t.Errorf("%s: decoded as %+v", name, e)
		}
	}
}

// FuzzDecodeEnvelope: no input makes the decoder panic, a refused one
// leaves nothing behind, and what it accepts survives encoding again
// (decode, encode, decode gives the same message).
func FuzzDecodeEnvelope(f *testing.F) {
	for _, e := range wireSamples() {
		f.Add(appendEnvelope(nil, e))
	}
	f.Add([]byte{wireVersion, byte(msgPing)})
	f.Fuzz(func(t *testing.T, data []byte) {
		var e envelope
		if decodeEnvelope(data, &e) != nil {
			if !reflect.DeepEqual(e, envelope{}) {
				t.Fatalf("refused, but left %+v", e)
			}
			return
		}
		again := appendEnvelope(nil, &e)
		var e2 envelope
		if err := decodeEnvelope(again, &e2); err != nil {
			t.Fatalf("re-encoding of an accepted message refused: %v", err)
		}
		if !reflect.DeepEqual(e, e2) {
			t.Fatalf("decode(encode(m)) != m:\n%+v\n%+v", e, e2)
		}
	})
}
