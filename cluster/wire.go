package cluster

import (
	"encoding/binary"
	"errors"
	"sync"
)

// The bus's messages on the wire: a compact binary encoding written by
// hand, because encoding/json cost about a tenth of each relay's CPU per
// cross-node request (reflection, base64 of keys and signatures, the
// frame scanned twice). Layout, version 1:
//
//	byte 0      wireVersion
//	byte 1      the message type (msgDeliver...)
//	then every field of envelope, in the order of encodeEnvelope, each
//	present (an absent one is empty):
//	  string, bytes   uvarint length, then the bytes
//	  int64           varint
//	  list            uvarint count, then the items
//
// Decoding never panics and never allocates more than the message's own
// size in items: a length or a count larger than what is left is refused,
// and so are trailing bytes and an unknown version or type. A node of
// another version cannot read these messages: the nodes of one cluster
// run the same version.
const wireVersion = 3

// msgType is the type of a bus message.
type msgType uint8

// Message types on the bus.
const (
	msgDeliver  msgType = 1 + iota // owner → key holders' nodes: a request
	msgAttached                    // holder node → owner: connections that received requests
	msgAnswer                      // holder node → owner: a sign_response (sig nil: it does not echo the message)
	msgReject                      // holder node → owner: a sign_reject
	msgDetached                    // holder node → owner: a recipient closed
	msgEnd                         // owner → key holders' nodes: the request ended
	msgHello                       // holder node → owners: a connection of the key was introduced
	msgPing                        // either way: which of these requests have ended?
	msgPong                        // the answer to a ping
	msgRefused                     // owner → holder node: that answer was not taken (Reason: the error code)
	msgLast     = msgRefused
)

// envelope is every message of the bus. Keys travel whole; the subjects
// carry only their hash.
type envelope struct {
	T        msgType
	ID       string
	Key      []byte
	Node     string // the sender
	Session  string
	Sessions []string // answer, reject: every recipient there, when not yet reported
	Frame    []byte
	Sig      []byte
	Reason   string
	Expires  int64 // unix milliseconds
	WinNode  string
	WinSess  string
	Refs     map[string][]byte  // request id → key, in pings
	Ended    map[string]endInfo // in pongs
	Att      []attachment       // attached: the requests and their recipients
	// Resource marks a delivered request that outlives its owner: another
	// node takes it over when the owner dies (protocol §C, §A.7).
	Resource bool
}

// attachment is one request's recipients on the sending node, in an
// attached message.
type attachment struct {
	ID       string
	Key      []byte
	Sessions []string
}

// endInfo is how a request ended, as a ping's answer tells it: the reason
// for its recipients, and the winner, who must not hear it.
type endInfo struct {
	Reason  string
	WinNode string
	WinSess string
}

var errWire = errors.New("cluster: malformed bus message")

var wireBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// appendEnvelope appends e's encoding to b.
func appendEnvelope(b []byte, e *envelope) []byte {
	b = append(b, wireVersion, byte(e.T))
	b = appendString(b, e.ID)
	b = appendBytes(b, e.Key)
	b = appendString(b, e.Node)
	b = appendString(b, e.Session)
	b = appendStrings(b, e.Sessions)
	b = appendBytes(b, e.Frame)
	b = appendBytes(b, e.Sig)
	b = appendString(b, e.Reason)
	b = binary.AppendVarint(b, e.Expires)
	b = appendString(b, e.WinNode)
	b = appendString(b, e.WinSess)
	b = binary.AppendUvarint(b, uint64(len(e.Refs)))
	for id, k := range e.Refs {
		b = appendString(b, id)
		b = appendBytes(b, k)
	}
	b = binary.AppendUvarint(b, uint64(len(e.Ended)))
	for id, n := range e.Ended {
		b = appendString(b, id)
		b = appendString(b, n.Reason)
		b = appendString(b, n.WinNode)
		b = appendString(b, n.WinSess)
	}
	b = binary.AppendUvarint(b, uint64(len(e.Att)))
	for _, a := range e.Att {
		b = appendString(b, a.ID)
		b = appendBytes(b, a.Key)
		b = appendStrings(b, a.Sessions)
	}
	var flags byte
	if e.Resource {
		flags |= flagResource
	}
	return append(b, flags)
}

// Bits of an envelope's last byte.
const flagResource = 1

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBytes(b []byte, p []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(p)))
	return append(b, p...)
}

func appendStrings(b []byte, ss []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(ss)))
	for _, s := range ss {
		b = appendString(b, s)
	}
	return b
}

// decodeEnvelope decodes data into e. Byte fields (Key, Frame, Sig) alias
// data; strings are copies. Empty fields decode as nil.
func decodeEnvelope(data []byte, e *envelope) error {
	if len(data) < 2 || data[0] != wireVersion || data[1] == 0 || msgType(data[1]) > msgLast {
		return errWire
	}
	r := wireReader{b: data[2:]}
	*e = envelope{T: msgType(data[1])}
	e.ID = r.str()
	e.Key = r.bytes()
	e.Node = r.str()
	e.Session = r.str()
	e.Sessions = r.strs()
	e.Frame = r.bytes()
	e.Sig = r.bytes()
	e.Reason = r.str()
	e.Expires = r.varint()
	e.WinNode = r.str()
	e.WinSess = r.str()
	if n := r.count(2); n > 0 {
		e.Refs = make(map[string][]byte, n)
		for range n {
			id := r.str()
			e.Refs[id] = r.bytes()
		}
	}
	if n := r.count(4); n > 0 {
		e.Ended = make(map[string]endInfo, n)
		for range n {
			id := r.str()
			e.Ended[id] = endInfo{Reason: r.str(), WinNode: r.str(), WinSess: r.str()}
		}
	}
	if n := r.count(3); n > 0 {
		e.Att = make([]attachment, n)
		for i := range e.Att {
			e.Att[i] = attachment{ID: r.str(), Key: r.bytes(), Sessions: r.strs()}
		}
	}
	if r.bad || len(r.b) != 1 || r.b[0]&^flagResource != 0 {
		*e = envelope{}
		return errWire
	}
	e.Resource = r.b[0]&flagResource != 0
	return nil
}

// wireReader reads fields off b; after the first error every read returns
// the zero value and bad stays set.
type wireReader struct {
	b   []byte
	bad bool
}

func (r *wireReader) uvarint() uint64 {
	if r.bad {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.bad = true
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *wireReader) varint() int64 {
	if r.bad {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.bad = true
		return 0
	}
	r.b = r.b[n:]
	return v
}

// count reads a list's length; each item takes at least size bytes, so a
// count that cannot fit in what is left is refused before anything is
// allocated for it.
func (r *wireReader) count(size int) int {
	n := r.uvarint()
	if r.bad || n > uint64(len(r.b)/size) {
		r.bad = true
		return 0
	}
	return int(n)
}

func (r *wireReader) bytes() []byte {
	n := r.uvarint()
	if r.bad || n > uint64(len(r.b)) {
		r.bad = true
		return nil
	}
	if n == 0 {
		return nil
	}
	p := r.b[:n:n]
	r.b = r.b[n:]
	return p
}

func (r *wireReader) str() string { return string(r.bytes()) }

func (r *wireReader) strs() []string {
	n := r.count(1)
	if n == 0 {
		return nil
	}
	ss := make([]string, n)
	for i := range ss {
		ss[i] = r.str()
	}
	return ss
}
