package tests

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/signrelay/signrelay/signer"
)

// TestSignerRunAgainstRelay: the production client approves and rejects by
// policy through the real relay.
func TestSignerRunAgainstRelay(t *testing.T) {
	r := startRelay(t, nil)
	pub, priv := newKey(t)
	connected := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- signer.Run(ctx, r.ws, priv, func(_ context.Context, req signer.Request) signer.Decision {
			if bytes.HasPrefix(req.Message, []byte("invoice:")) {
				return signer.Decision{Approve: true}
			}
			return signer.Decision{Reason: "only invoices"}
		}, &signer.Options{OnState: func(s signer.StateChange) {
			if s.State == signer.StateConnected {
				select {
				case connected <- struct{}{}:
				default:
				}
			}
		}})
	}()
	defer func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	}()
	<-connected
	verifyResult(t, r.post(signBody(pub, []byte("invoice:42"), nil)), pub, []byte("invoice:42"))
	got := r.post(signBody(pub, []byte("wire everything"), nil))
	expectError(t, got, http.StatusForbidden, "rejected")
	if got.ErrReason == nil || *got.ErrReason != "only invoices" {
		t.Fatalf("reason %s", got.RawBody)
	}
}

// TestSignerSessionSeesCancel: a Dial session hears sign_cancel as a
// cancelled request context with the relay's reason.
func TestSignerSessionSeesCancel(t *testing.T) {
	r := startRelay(t, nil)
	pub, priv := newKey(t)
	s, err := signer.Dial(context.Background(), r.ws, priv, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	res := r.signAsync(signBody(pub, []byte("short"), map[string]any{"timeout_ms": 100}))
	req := <-s.Requests()
	<-req.Context().Done()
	if req.CancelReason() != "timeout" {
		t.Fatalf("cancel reason %q", req.CancelReason())
	}
	expectError(t, awaitResp(t, res), http.StatusGatewayTimeout, "timeout")
}
