package signer_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/signrelay/signrelay/signer"
)

// A service that holds its key in a file and signs invoices, and nothing
// else, for as long as it runs.
func ExampleRun() {
	key, err := signer.LoadPrivateKey("/etc/invoicer/signer-key.pem")
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	err = signer.Run(ctx, "wss://relay.example.com/ws", key,
		func(ctx context.Context, req signer.Request) signer.Decision {
			// Requester is the name of the relay's API key that asks
			// ({name: billing, key: ...} in its api_keys), never the key.
			if req.Requester != "billing" {
				return signer.Decision{Reason: "only the billing service may ask"}
			}
			if !bytes.HasPrefix(req.Message, []byte("invoice:")) {
				return signer.Decision{Reason: "only invoices are signed here"}
			}
			return signer.Decision{Approve: true}
		},
		&signer.Options{
			MaxBackoff: 10 * time.Second,
			OnState: func(c signer.StateChange) {
				if c.State == signer.StateConnected {
					slog.Info("ready to sign", "session", c.SessionID)
				}
			},
		})
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Fatal(err)
	}
}

// One connection, driven by hand: take requests, answer each, and stop when
// the relay goes away.
func ExampleDial() {
	key, err := signer.LoadPrivateKey("signer-key.pem")
	if err != nil {
		log.Fatal(err)
	}
	s, err := signer.Dial(context.Background(), "ws://127.0.0.1:8080/ws", key, nil)
	var ie *signer.IntroductionError
	if errors.As(err, &ie) {
		log.Fatalf("relay refused the key: %s (close %d)", ie.Message, ie.CloseCode)
	} else if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	for req := range s.Requests() {
		who := req.Requester
		if who == "" {
			who = "a backend" // the relay's API key has no name
		}
		fmt.Printf("%s asks to sign %q (%s), request %s\n", who, req.Message, req.Description, req.ID)
		if err := s.Approve(context.Background(), req.ID); err != nil {
			// ErrNotPending: cancelled meanwhile, for example by the
			// backend itself (req.CancelReason() == "cancelled").
			log.Print(err)
		}
	}
	log.Printf("session ended: %v", s.Err())
}

// A key kept as a base64 seed, for example in an environment variable.
func ExampleParsePrivateKey() {
	seed := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	key, err := signer.ParsePrivateKey([]byte(seed))
	if err != nil {
		log.Fatal(err)
	}
	pub := key.Public().(ed25519.PublicKey)
	fmt.Println("public key:", base64.StdEncoding.EncodeToString(pub))
	// Output: public key: 6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw=
}
