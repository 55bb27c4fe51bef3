// Package client is the Go client for backends of the signing relay: a
// service that needs an Ed25519 signature from a key it does not hold asks
// the relay, and the relay asks the key holder (a person's browser, a
// device, a service running package signer) that is connected for that
// public key. The wire contract is docs/protocol.md; this package speaks
// its backend half (POST /sign, GET and DELETE /sign/{id}) and depends on
// nothing but the standard library.
//
// # Asking and waiting
//
//	c := client.New("https://relay.example.com", os.Getenv("SIGNRELAY_API_KEY"))
//	sig, err := c.Sign(ctx, client.SignRequest{
//		PublicKey:   holderKey,            // ed25519.PublicKey of the key holder
//		Message:     []byte("invoice: 42, 10.00 EUR"),
//		Description: "Invoice 42",         // shown to the person, not signed
//	})
//	switch {
//	case errors.Is(err, client.ErrRejected):     // the person said no
//	case errors.Is(err, client.ErrNotConnected): // nobody holds the key right now
//	case errors.Is(err, client.ErrTimeout):      // nobody answered in time
//	case err != nil:
//	default:
//		use(sig.Signature) // verified by the client against holderKey and the message
//	}
//
// [Client.Sign] blocks for up to the request's timeout (60 s at most).
// For longer waits, or to take a request back, [Client.SignAsync] makes
// the request and returns at once; [Client.Wait] long-polls until it
// ends, [Client.Get] looks at it, and [Client.Cancel] withdraws it (the
// holder's card goes away). SignRequest.WaitForHolder makes the relay
// hold a request for a key that is not connected yet, until the holder
// connects or the timeout passes.
//
// # A network blip never asks the person twice
//
// Every Sign and SignAsync call sends an Idempotency-Key: the caller's
// SignRequest.IdempotencyKey or, when that is empty, a random one made
// for the call. Each retry of the call sends the same key, and the relay
// answers a retry with the request the first attempt made (the person's
// one card), pending or ended; [Signature.Replayed] and
// [Request.Replayed] say when that happened. The relay keeps such a
// request running when the blocking call that made it loses its
// connection, so a retried Sign picks up the same answer.
//
// The client retries transport errors, 503 unavailable and 429
// rate_limited (after its Retry-After, within a bound), with backoff and
// jitter, a bounded number of times and never past the context's
// deadline; see [RetryPolicy]. It never retries another 4xx, nor an
// outcome: a rejection, a timeout or a cancellation is final.
//
// Set IdempotencyKey yourself to join one request across calls or
// processes, for example a job that may be restarted: derive it from the
// job's own id. The relay remembers a key for its sign.result_ttl (1 h by
// default); using it for another message or key is
// [ErrIdempotencyKeyReused].
//
// # Errors
//
// An answer that is not a success is an [*Error] with the HTTP status,
// the contract's error code and message, the holder's reason for a
// rejection, the request id and Retry-After. It matches one sentinel with
// errors.Is: [ErrRejected], [ErrTimeout], [ErrNotConnected],
// [ErrInvalidSignature], [ErrUnavailable], [ErrRateLimited],
// [ErrUnauthorized], [ErrInvalidRequest], [ErrMessageTooLarge],
// [ErrNotFound], [ErrCancelled], [ErrNotPending],
// [ErrIdempotencyKeyReused], or [ErrUnexpectedResponse] for anything the
// contract does not name. A request that ended without a signature
// carries the same *Error in [Request.Error].
//
// # Verification
//
// The relay verifies every signature before it answers; the client checks
// again, with crypto/ed25519, that each signature it returns is by the
// public key and over the message it asked for, and returns
// [ErrUnverifiedSignature] instead of a signature that is not. A relay,
// or anything between it and the backend, cannot make a backend accept a
// forged signature.
package client
