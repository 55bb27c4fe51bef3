package client_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/signrelay/signrelay/client"
	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/httpapi"
	"github.com/signrelay/signrelay/signer"
)

// Ask a key holder for a signature and wait for it.
func Example() {
	relay := startExampleRelay() // a relay on loopback and a key holder
	defer relay.stop()

	c := client.New(relay.url, relay.apiKey)
	defer c.CloseIdleConnections()
	sig, err := c.Sign(context.Background(), client.SignRequest{
		PublicKey:   relay.holderKey,
		Message:     []byte("invoice: 42, 10.00 EUR"),
		Description: "Invoice 42",
	})
	if err != nil {
		log.Fatal(err)
	}
	// The client has verified the signature; checking again costs little.
	fmt.Println("signed:", ed25519.Verify(relay.holderKey, sig.Message, sig.Signature))
	// Output: signed: true
}

// Each outcome is an error that errors.Is tells apart; the holder's reason
// for a rejection is in the *client.Error.
func ExampleClient_Sign_errors() {
	relay := startExampleRelay()
	defer relay.stop()
	c := client.New(relay.url, relay.apiKey)
	defer c.CloseIdleConnections()
	ctx := context.Background()

	_, err := c.Sign(ctx, client.SignRequest{PublicKey: relay.holderKey, Message: []byte("transfer: all of it")})
	var e *client.Error
	if errors.Is(err, client.ErrRejected) && errors.As(err, &e) {
		fmt.Printf("rejected (%d): %s\n", e.Status, e.Reason)
	}

	nobody, _, _ := ed25519.GenerateKey(nil)
	_, err = c.Sign(ctx, client.SignRequest{PublicKey: nobody, Message: []byte("invoice: 43")})
	fmt.Println("not connected:", errors.Is(err, client.ErrNotConnected))

	bad := client.New(relay.url, "not-the-api-key")
	defer bad.CloseIdleConnections()
	_, err = bad.Sign(ctx, client.SignRequest{PublicKey: relay.holderKey, Message: []byte("invoice: 44")})
	fmt.Println("unauthorized:", errors.Is(err, client.ErrUnauthorized))
	// Output:
	// rejected (403): only invoices are signed here
	// not connected: true
	// unauthorized: true
}

// Make a request that may wait minutes for a person, come back for it
// later, and see how it ended.
func ExampleClient_SignAsync() {
	relay := startExampleRelay()
	defer relay.stop()
	c := client.New(relay.url, relay.apiKey)
	defer c.CloseIdleConnections()
	ctx := context.Background()

	req, err := c.SignAsync(ctx, client.SignRequest{
		PublicKey: relay.holderKey,
		Message:   []byte("invoice: 45, 99.00 EUR"),
		Timeout:   10 * time.Minute,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("made:", req.Status, "by", req.Requester)

	// Store req.ID; any process with the same API key can wait for it.
	done, err := c.Wait(ctx, req.ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("ended:", done.Status, len(done.Signature), "bytes of signature")
	// Output:
	// made: pending by billing
	// ended: signed 64 bytes of signature
}

// Take back a request nobody has answered yet: the holder is told, and
// whoever waits for it learns that it was cancelled.
func ExampleClient_Cancel() {
	relay := startExampleRelay()
	defer relay.stop()
	c := client.New(relay.url, relay.apiKey)
	defer c.CloseIdleConnections()
	ctx := context.Background()

	req, err := c.SignAsync(ctx, client.SignRequest{
		PublicKey: relay.holderKey,
		Message:   []byte("ask a person: may I deploy?"),
	})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := c.Cancel(ctx, req.ID); err != nil {
		log.Fatal(err)
	}
	done, err := c.Wait(ctx, req.ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(done.Status, errors.Is(done.Err(), client.ErrCancelled))
	// Output: cancelled true
}

// Name the request yourself to pick it up again from another call or
// process: the same key joins the same request, and the holder is asked
// once.
func ExampleSignRequest_idempotencyKey() {
	relay := startExampleRelay()
	defer relay.stop()
	c := client.New(relay.url, relay.apiKey)
	defer c.CloseIdleConnections()
	ctx := context.Background()

	ask := client.SignRequest{
		PublicKey:      relay.holderKey,
		Message:        []byte("invoice: 46, 5.00 EUR"),
		IdempotencyKey: "invoice-46", // e.g. the job's own id
	}
	first, err := c.Sign(ctx, ask)
	if err != nil {
		log.Fatal(err)
	}
	again, err := c.Sign(ctx, ask) // say, after a restart
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("same request:", first.RequestID == again.RequestID, "replayed:", again.Replayed)
	fmt.Println("same signature:", bytes.Equal(first.Signature, again.Signature))

	ask.Message = []byte("invoice: 46, 500.00 EUR")
	_, err = c.Sign(ctx, ask)
	fmt.Println("other message, same key:", errors.Is(err, client.ErrIdempotencyKeyReused))
	// Output:
	// same request: true replayed: true
	// same signature: true
	// other message, same key: true
}

// exampleRelay is a relay on a loopback port with one key holder, run
// with package signer, that signs messages starting with "invoice:",
// leaves those starting with "ask a person:" waiting (as a person who
// has not looked yet would) and rejects everything else.
type exampleRelay struct {
	url, apiKey string
	holderKey   ed25519.PublicKey
	stop        func()
}

func startExampleRelay() *exampleRelay {
	const apiKey = "example-api-key-0123456789abcdef"
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.APIKeys = []config.APIKey{{Name: "billing", Key: apiKey}}
	cfg.RateLimits.Enabled = false
	cfg.ShutdownGrace = config.Duration(2 * time.Second)
	quiet := slog.New(slog.DiscardHandler)
	if err := cfg.Validate(); err != nil {
		log.Fatal(err)
	}
	srv, err := httpapi.New(cfg, quiet)
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		log.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()

	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	ctx, cancel := context.WithCancel(context.Background())
	connected := make(chan struct{}, 1)
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		_ = signer.Run(ctx, "ws://"+ln.Addr().String()+"/ws", key,
			func(ctx context.Context, req signer.Request) signer.Decision {
				switch {
				case bytes.HasPrefix(req.Message, []byte("invoice:")):
					return signer.Decision{Approve: true}
				case bytes.HasPrefix(req.Message, []byte("ask a person:")):
					<-ctx.Done() // cancelled, or the relay stops
					return signer.Decision{}
				}
				return signer.Decision{Reason: "only invoices are signed here"}
			},
			&signer.Options{Logger: quiet, OnState: func(c signer.StateChange) {
				if c.State == signer.StateConnected {
					select {
					case connected <- struct{}{}:
					default:
					}
				}
			}})
	}()
	select {
	case <-connected:
	case <-time.After(10 * time.Second):
		log.Fatal("the example's key holder did not connect")
	}
	return &exampleRelay{
		url: "http://" + ln.Addr().String(), apiKey: apiKey,
		holderKey: key.Public().(ed25519.PublicKey),
		stop: func() {
			cancel()
			<-ran
			sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer scancel()
			if err := srv.Shutdown(sctx); err != nil && !strings.Contains(err.Error(), "closed") {
				log.Print(err)
			}
			<-served
		},
	}
}
