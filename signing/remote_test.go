package signing

import (
	"context"
	"testing"

	"github.com/signrelay/signrelay/protocol"
)

// remoteHolder is a connection on another node, as a bus names it.
type remoteHolder struct{ *holder }

func (remoteHolder) Node() string { return "other" }

// The owner verifies a remote answer and returns the error its key holder
// must hear; an answer that did not echo the message (sig nil) was refused
// by its own node already, one sent again after its error (the error was
// lost on the bus) gets the error again and does not count twice, and one
// that comes after the end is unknown_request, as on one node.
func TestRemoteAnswerVerdicts(t *testing.T) {
	s, _ := setup(t, Options{})
	a, b := attachPair(t, s)
	r := remoteHolder{newHolder(t, a.priv, "r")}
	q := remoteHolder{newHolder(t, a.priv, "q")}
	ch := start(s, context.Background(), Request{Key: a.key, Message: []byte("m")})
	id := a.next(t).RequestID
	b.next(t)
	bad := make([]byte, 64)
	for i := 0; i < 2; i++ {
		if fe := s.RemoteAnswer(id, r, bad); fe == nil || fe.Code != protocol.CodeInvalidSignature || fe.RequestID != id {
			t.Fatalf("answer %d: %+v, want invalid_signature for %s", i, fe, id)
		}
	}
	if fe := s.RemoteAnswer(id, q, nil); fe != nil {
		t.Fatalf("an answer its node refused: %+v, want nil", fe)
	}
	if fe := s.RemoteAnswer(id, q, bad); fe == nil {
		t.Fatal("an answer after one its node refused counted")
	}
	good := a.answer(frame{RequestID: id, Message: []byte("m")})
	if fe := s.RemoteAnswer(id, r, good.Signature); fe == nil || fe.Code != protocol.CodeInvalidSignature {
		t.Fatalf("a failed recipient's second answer: %+v, want it refused", fe)
	}
	if fe := s.RemoteAnswer(id, remoteHolder{newHolder(t, a.priv, "p")}, good.Signature); fe != nil {
		t.Fatal(fe)
	}
	if res := await(t, ch); res.err != nil {
		t.Fatal(res.err)
	}
	if fe := s.RemoteAnswer(id, r, bad); fe == nil || fe.Code != protocol.CodeUnknownRequest {
		t.Fatalf("after the end: %+v, want unknown_request, as on one node", fe)
	}
	if fe := s.RemoteAnswer(id, q, nil); fe != nil {
		t.Fatalf("after the end, an answer its node refused: %+v, want nil", fe)
	}
}
