// Package signer is the Go key-holder client of the signing relay: a
// program that holds an Ed25519 private key connects to the relay's
// WebSocket endpoint (GET /ws), proves that it holds the key, and then
// approves or rejects the sign requests that backends send for that key
// through POST /sign. The key never leaves the program; the relay only
// ever sees signatures. The wire contract is docs/protocol.md.
//
// # Two levels
//
// [Run] is what a service uses in production: it keeps one connection up,
// reconnecting with exponential backoff and jitter, and calls a [Handler]
// for each request (concurrently, bounded), sending its [Decision].
//
// [Dial] opens exactly one connection and returns a [Session], on which
// the program reads [Session.Requests] and answers with [Session.Approve]
// or [Session.Reject]. Tests and programs that need full control (for
// example several connections of one key) use it.
//
// # A service holding a key in a file
//
// Generate a key once, and keep the file readable by the service only:
//
//	openssl genpkey -algorithm ed25519 -out signer-key.pem
//	chmod 600 signer-key.pem
//
// Then run the holder until the process is told to stop:
//
//	func main() {
//		key, err := signer.LoadPrivateKey("signer-key.pem")
//		if err != nil {
//			log.Fatal(err)
//		}
//		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
//		defer stop()
//
//		// The backends ask for this key by its public half:
//		pub := key.Public().(ed25519.PublicKey)
//		log.Printf("public key %s", base64.StdEncoding.EncodeToString(pub))
//
//		err = signer.Run(ctx, "wss://relay.example.com/ws", key,
//			func(ctx context.Context, req signer.Request) signer.Decision {
//				// A policy decides; a person could be asked instead, as long
//				// as the wait ends when ctx does.
//				if req.Requester != "billing" {
//					return signer.Decision{Reason: "only the billing service may ask"}
//				}
//				if !bytes.HasPrefix(req.Message, []byte("invoice:")) {
//					return signer.Decision{Reason: "only invoices are signed here"}
//				}
//				return signer.Decision{Approve: true}
//			}, nil)
//		if err != nil && !errors.Is(err, context.Canceled) {
//			log.Fatal(err)
//		}
//	}
//
// [ParsePrivateKey] also accepts a base64 seed, for keys kept in an
// environment variable or a secret store.
//
// # What the relay may do, and what the client guarantees
//
//   - Each request says who asks: [Request.Requester] is the name of the
//     API key the backend used ("billing"), set by the relay from its
//     configuration, or "" for a key without a name. The Description is the
//     backend's own free text.
//   - A request ends without this side's answer when it times out, is
//     answered by another connection of the same key, its backend goes away,
//     its backend cancels it (DELETE /sign/{id}, reason "cancelled") or the
//     relay shuts down: the relay sends sign_cancel, which cancels the
//     request's context ([Request.Context], [Request.CancelReason],
//     [CancelError.ByRequester]) and is reported on [Session.Cancels].
//   - A request may be made before this side connects (a backend's
//     "wait_for_holder"), and an asynchronous one may wait minutes: the
//     relay delivers what is pending for the key right after the
//     introduction, so the first requests of a fresh session can be old
//     ones, with [Request.ExpiresAt] as the relay set it.
//   - Answers the relay refuses (a request no longer pending, say) come
//     back as [RelayError] values on [Session.Errors]; the connection stays.
//   - When the connection ends, [Session.Err] is a [*CloseError] with the
//     relay's close code: 1001 when it shuts down, 1008 for a policy
//     violation, 1009 for a frame too big, 1006 for a dropped connection.
//     A refused introduction is an [*IntroductionError] from Dial (close
//     code 4401); a refused upgrade (rate limit, origin) a [*HandshakeError].
//   - The client never signs a message that starts with the reserved
//     prefix "signing-relay/" (the introduction's own); such a request is
//     rejected automatically, so a hostile relay cannot replay a
//     challenge through it.
//   - The client answers the relay's pings and sends its own, so a dead
//     network path ends the session within twice [DialOptions.KeepAlive].
//
// # Concurrency and backpressure
//
// Each Session has one reading goroutine (plus one for keep-alive pings).
// Approve, Reject and Close may be called from any goroutine; frames are
// written one at a time. Requests is a buffered channel: when it is full,
// the session stops reading until the program takes a request, so a slow
// program slows the relay down instead of growing memory (the relay may
// then close the connection as too slow). Cancels and Errors never block:
// when full they drop their oldest entry. Close never waits for any of
// these channels to be drained.
package signer
