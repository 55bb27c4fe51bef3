package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
)

// RetryPolicy says which failed attempts the client repeats, and how long
// it waits between them. Every retry of a Sign or SignAsync call carries
// the call's idempotency key, so a retry joins the request the first
// attempt made instead of asking the person again.
//
// Retried: transport errors (connection refused or reset, EOF before an
// answer, a timeout of the http.Client), 503 unavailable, 429 rate_limited
// (after its Retry-After), and a 502 or 504 that is not the contract's (a
// proxy's page). Never retried: any other 4xx, and every outcome of a
// request (rejected, timeout, invalid_signature, cancelled), nor a stored
// outcome replayed for an idempotency key. The caller's context bounds the
// total time: the client does not start a wait that would outlast it.
type RetryPolicy struct {
	// MaxAttempts bounds the attempts of one call, the first included;
	// 1 turns retries off. Default 4.
	MaxAttempts int
	// MinBackoff and MaxBackoff bound the exponential backoff between
	// attempts: MinBackoff before the second, doubling up to MaxBackoff.
	// Defaults 200 ms and 5 s.
	MinBackoff, MaxBackoff time.Duration
	// MaxRetryAfter is the longest Retry-After the client waits for; an
	// answer asking for more is returned at once (its Error.RetryAfter
	// says how long). Default 30 s.
	MaxRetryAfter time.Duration
	// Jitter turns a backoff into the wait used, to spread retries of
	// many clients apart. The default waits a uniformly random time in
	// [d/2, d]. Retry-After waits are not jittered.
	Jitter func(d time.Duration) time.Duration
	// OnRetry, when set, is called before each wait for a retry (for
	// logs and metrics). It must not block.
	OnRetry func(Retry)
}

// Retry describes a retry that is about to happen.
type Retry struct {
	Method string // "POST", "GET", "DELETE"
	Path   string // "/sign" or "/sign/<id>"
	// Attempt is the attempt that failed, counting from 1.
	Attempt int
	// Err is why it failed: a transport error or an *Error.
	Err error
	// Delay is the wait before the next attempt.
	Delay time.Duration
}

// DefaultRetryPolicy is the policy of a client made without WithRetry.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{MaxAttempts: 4, MinBackoff: 200 * time.Millisecond, MaxBackoff: 5 * time.Second, MaxRetryAfter: 30 * time.Second}
}

// withDefaults fills p's zero fields from DefaultRetryPolicy.
func (p RetryPolicy) withDefaults() RetryPolicy {
	d := DefaultRetryPolicy()
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = d.MaxAttempts
	}
	if p.MinBackoff <= 0 {
		p.MinBackoff = d.MinBackoff
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = d.MaxBackoff
	}
	p.MaxBackoff = max(p.MaxBackoff, p.MinBackoff)
	if p.MaxRetryAfter <= 0 {
		p.MaxRetryAfter = d.MaxRetryAfter
	}
	if p.Jitter == nil {
		p.Jitter = func(d time.Duration) time.Duration {
			if d <= 1 {
				return d
			}
			return d/2 + rand.N(d/2+1)
		}
	}
	return p
}

// backoff is the wait after the failed attempt n (from 1).
func (p *RetryPolicy) backoff(n int) time.Duration {
	d := p.MinBackoff
	for i := 1; i < n && d < p.MaxBackoff; i++ {
		d *= 2
	}
	return p.Jitter(min(d, p.MaxBackoff))
}

// retryResponse decides whether an answer that is not the call's success
// is worth another attempt, and after how long.
func (p *RetryPolicy) retryResponse(e *Error, attempt int) (bool, time.Duration) {
	if e.Replayed {
		return false, 0 // a stored outcome: asking again gets it again
	}
	switch e.Status {
	case http.StatusTooManyRequests:
		if e.RetryAfter > p.MaxRetryAfter {
			return false, 0
		}
		if e.RetryAfter > 0 {
			return true, e.RetryAfter
		}
		return true, p.backoff(attempt)
	case http.StatusServiceUnavailable:
		if e.RetryAfter > p.MaxRetryAfter {
			return false, 0
		}
		return true, max(e.RetryAfter, p.backoff(attempt))
	case http.StatusBadGateway, http.StatusGatewayTimeout:
		// The contract's 502 and 504 are a request's outcome; without the
		// contract's body they come from something in between, and a retry
		// with the idempotency key picks the request up again.
		return e.Code == "", p.backoff(attempt)
	}
	return false, 0
}

// retryTransport reports whether a transport error may go away on its own.
// Certificate errors do not.
func retryTransport(err error) bool {
	var (
		cve *tls.CertificateVerificationError
		ua  x509.UnknownAuthorityError
		he  x509.HostnameError
		ci  x509.CertificateInvalidError
	)
	return !errors.As(err, &cve) && !errors.As(err, &ua) && !errors.As(err, &he) && !errors.As(err, &ci)
}

// parseRetryAfter reads a Retry-After header: whole seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n < 0 {
			return 0
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
