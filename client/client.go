package client

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client calls one relay with one API key. It is safe for concurrent use;
// make one per relay and API key and keep it.
type Client struct {
	base     string // scheme://host[:port][/prefix], without a trailing slash
	apiKey   string
	hc       *http.Client
	retry    RetryPolicy
	pollWait time.Duration
	ua       string
	err      error // a base URL that cannot work, reported by every call

	// sleep waits between attempts; tests replace it.
	sleep func(context.Context, time.Duration) error
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient makes the client send its requests through hc, for a
// proxy, custom TLS roots or a dialer of your own. Leave hc.Timeout zero
// or above a minute: a blocking Sign and each long poll of Wait last up to
// 60 s. The default is a client of its own, with a copy of
// http.DefaultTransport and no timeout (the context bounds every call).
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) {
		if hc != nil {
			c.hc = hc
		}
	}
}

// WithRetry replaces the retry policy; zero fields take the defaults of
// DefaultRetryPolicy. RetryPolicy{MaxAttempts: 1} turns retries off.
func WithRetry(p RetryPolicy) Option {
	return func(c *Client) { c.retry = p.withDefaults() }
}

// WithLongPoll sets how long each GET of Wait asks the relay to hold the
// answer while the request is pending (wait_ms). Default 30 s, at most
// 60 s (the contract's limit); shorter suits proxies that cut idle
// connections sooner. Zero or less keeps the default.
func WithLongPoll(d time.Duration) Option {
	return func(c *Client) {
		if d > 0 {
			c.pollWait = min(max(d, time.Millisecond), maxWait)
		}
	}
}

// WithUserAgent sets the User-Agent header of every request.
func WithUserAgent(ua string) Option {
	return func(c *Client) { c.ua = ua }
}

const (
	maxWait = 60 * time.Second
	// maxBody bounds what the client reads of one answer.
	maxBody = 64 << 20
	// pollMargin: a long poll ends this long before the caller's deadline,
	// so that Wait can return the last state rather than an aborted call.
	pollMargin = 50 * time.Millisecond
	// deadlineMargin: a Sign bounded by the caller's deadline asks the
	// relay to give up this much sooner, so that the caller gets the
	// relay's answer (504 timeout) rather than its own context's error.
	deadlineMargin = 100 * time.Millisecond
)

// New returns a client of the relay at baseURL (for example
// "https://relay.example.com", or with a path prefix where a proxy mounts
// the relay) that authenticates with apiKey. A baseURL that is not http
// or https makes every call fail.
func New(baseURL, apiKey string, opts ...Option) *Client {
	c := &Client{
		base:     strings.TrimRight(baseURL, "/"),
		apiKey:   apiKey,
		retry:    DefaultRetryPolicy().withDefaults(),
		pollWait: 30 * time.Second,
		ua:       "signrelay-go-client/1.1",
		sleep:    sleep,
	}
	if u, err := url.Parse(c.base); err != nil {
		c.err = fmt.Errorf("signrelay: base URL %q: %w", baseURL, err)
	} else if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		c.err = fmt.Errorf("signrelay: base URL %q: want http:// or https:// and a host", baseURL)
	}
	for _, o := range opts {
		o(c)
	}
	if c.hc == nil {
		tr, _ := http.DefaultTransport.(*http.Transport)
		var rt http.RoundTripper = http.DefaultTransport
		if tr != nil {
			rt = tr.Clone()
		}
		c.hc = &http.Client{Transport: rt}
	}
	return c
}

// CloseIdleConnections closes the kept-alive connections of the client's
// http.Client, for a clean shutdown.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// Sign asks the holder of r.PublicKey to sign r.Message and waits for the
// answer (a blocking POST /sign). It returns the signature once the client
// has verified it, or an error matching one of the sentinels:
// ErrRejected (the *Error's Reason says why), ErrTimeout,
// ErrNotConnected, ErrCancelled, ErrInvalidSignature, ErrUnauthorized,
// ErrInvalidRequest, ErrMessageTooLarge, ErrRateLimited, ErrUnavailable,
// ErrIdempotencyKeyReused; a transport error once retries are spent; or
// ctx's error.
//
// Every call carries an idempotency key (r.IdempotencyKey, or a random
// one), so when the connection drops while waiting the client asks again
// and joins the same request: the relay keeps such a request running
// when its caller goes away, and the person is asked once. For the same
// reason a request is not withdrawn when ctx ends; it runs on until its
// timeout. With a generated key and a ctx deadline sooner than r.Timeout
// (or than 60 s when r.Timeout is zero), Sign asks for that deadline as
// the request's timeout, so that nobody is asked to sign after the
// caller stopped waiting. Use SignAsync and Cancel to withdraw a request.
func (c *Client) Sign(ctx context.Context, r SignRequest) (*Signature, error) {
	key := r.IdempotencyKey
	if key == "" {
		key = newIdempotencyKey()
		if dl, ok := ctx.Deadline(); ok {
			limit := r.Timeout
			if limit == 0 {
				limit = maxWait
			}
			left := time.Until(dl)
			if left > 2*deadlineMargin {
				left -= deadlineMargin // so the relay's 504 comes before ctx ends
			}
			if left = left.Truncate(time.Millisecond); left < limit {
				r.Timeout = max(left, time.Millisecond)
			}
		}
	}
	body, err := signBody(r, false)
	if err != nil {
		return nil, err
	}
	res, err := c.do(ctx, call{method: http.MethodPost, path: "/sign", body: body, idemKey: key, want: http.StatusOK})
	if err != nil {
		return nil, err
	}
	s, err := decodeResult(res.body, r.PublicKey, r.Message)
	if err != nil {
		return nil, err
	}
	s.Replayed = res.replayed()
	return s, nil
}

// SignAsync makes the request and returns at once with it pending (POST
// /sign with "wait": false: 202 and the resource), without waiting for
// the holder. Follow it with Wait, Get or Cancel and its ID. Its timeout
// may be up to the relay's sign.max_async_timeout (10 min or more), so a
// person who is away from the phone has time to answer.
//
// Like Sign it sends an idempotency key, generated when r has none, and
// retries transport errors, 503 and 429 with it, so a retry never makes a
// second request. With r.IdempotencyKey set, a request made before under
// that key is returned (Replayed) instead of a new one, pending or ended.
// The errors are those before a request is made: ErrNotConnected (unless
// r.WaitForHolder), ErrInvalidRequest, ErrUnauthorized,
// ErrMessageTooLarge, ErrRateLimited, ErrUnavailable and
// ErrIdempotencyKeyReused.
func (c *Client) SignAsync(ctx context.Context, r SignRequest) (*Request, error) {
	key := r.IdempotencyKey
	if key == "" {
		key = newIdempotencyKey()
	}
	body, err := signBody(r, true)
	if err != nil {
		return nil, err
	}
	res, err := c.do(ctx, call{method: http.MethodPost, path: "/sign", body: body, idemKey: key, want: http.StatusAccepted})
	if err != nil {
		return nil, err
	}
	req, err := decodeResource(res.body)
	if err != nil {
		return nil, err
	}
	if req.Status == StatusSigned {
		if err := verifyFor(req.ID, req.PublicKey, req.Message, req.Signature, r.PublicKey, r.Message); err != nil {
			return nil, err
		}
	} else if !bytes.Equal(req.PublicKey, r.PublicKey) || !bytes.Equal(req.Message, r.Message) {
		return nil, unexpected("resource %s is for another key or message than asked", req.ID)
	}
	req.Replayed = res.replayed()
	return req, nil
}

// Get returns the request id as the relay knows it now (GET /sign/{id}).
// A request that ended without a signature is not an error of Get: its
// Status and Error (and Err) say how it ended. A signed request's
// signature is verified against the request's own public key and
// message; compare those with what you meant to ask when the id comes
// from elsewhere. ErrNotFound when the id is unknown, forgotten after the
// relay's result_ttl or another API key's; ErrInvalidRequest when it is
// not a UUID.
func (c *Client) Get(ctx context.Context, id string) (*Request, error) {
	return c.get(ctx, id, 0)
}

// Wait waits until the request id ends and returns it: signed (with its
// verified signature), or ended otherwise, with Status and Error (and Err)
// saying how. It long-polls GET /sign/{id}?wait_ms=..., asking again while
// the request is pending, so it returns as soon as the request ends. A
// request always ends by its own deadline, so Wait does too; when ctx ends
// first, Wait returns the last state it saw (pending; nil when it saw
// none) with ctx's error. Errors are those of Get.
func (c *Client) Wait(ctx context.Context, id string) (*Request, error) {
	var last *Request
	for {
		if err := ctx.Err(); err != nil {
			return last, err
		}
		w := c.pollWait
		if dl, ok := ctx.Deadline(); ok {
			left := time.Until(dl)
			if left > 2*pollMargin {
				left -= pollMargin
			}
			w = min(w, max(left, time.Millisecond))
		}
		r, err := c.get(ctx, id, w)
		if err != nil {
			if ctx.Err() != nil {
				return last, ctx.Err()
			}
			return nil, err
		}
		if r.Status.Ended() {
			return r, nil
		}
		last = r
	}
}

func (c *Client) get(ctx context.Context, id string, wait time.Duration) (*Request, error) {
	cl := call{method: http.MethodGet, path: "/sign/" + url.PathEscape(id), want: http.StatusOK}
	if wait > 0 {
		cl.query = "wait_ms=" + strconv.FormatInt(int64(min(wait, maxWait)/time.Millisecond), 10)
	}
	res, err := c.do(ctx, cl)
	if err != nil {
		return nil, err
	}
	return decodeResource(res.body)
}

// Cancel withdraws the pending request id (DELETE /sign/{id}) and returns
// it, now cancelled: every key holder that received it is told (sign_cancel
// "cancelled"), a blocking Sign waiting for it returns ErrCancelled, and
// Wait returns it with StatusCancelled. Cancelling a cancelled request
// again returns it as well. ErrNotPending when it had ended otherwise
// (the *Error's RequestID names it; Get shows how), ErrNotFound when it is
// unknown or another API key's.
func (c *Client) Cancel(ctx context.Context, id string) (*Request, error) {
	res, err := c.do(ctx, call{method: http.MethodDelete, path: "/sign/" + url.PathEscape(id), want: http.StatusOK})
	if err != nil {
		return nil, err
	}
	return decodeResource(res.body)
}

// signBody encodes r as a POST /sign body.
func signBody(r SignRequest, async bool) ([]byte, error) {
	if len(r.PublicKey) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: public key is %d bytes, want %d", ErrInvalidRequest, len(r.PublicKey), ed25519.PublicKeySize)
	}
	if r.Timeout < 0 {
		return nil, fmt.Errorf("%w: negative timeout %s", ErrInvalidRequest, r.Timeout)
	}
	w := wireSignBody{
		PublicKey: b64.EncodeToString(r.PublicKey), Message: b64.EncodeToString(r.Message),
		Description: r.Description, WaitForHolder: r.WaitForHolder,
		TimeoutMS: int64((r.Timeout + time.Millisecond - 1) / time.Millisecond),
	}
	if async {
		f := false
		w.Wait = &f
	}
	return json.Marshal(w)
}

// newIdempotencyKey is 128 random bits, base64url: 22 visible characters.
func newIdempotencyKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// --- one call, with retries ------------------------------------------------

type call struct {
	method, path, query string
	body                []byte
	idemKey             string
	want                int // the status of success
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r *response) replayed() bool { return r.header.Get("Idempotent-Replayed") == "true" }

// do sends cl until it succeeds, fails for good, the attempts are spent or
// ctx ends; every attempt is the same request, idempotency key included.
func (c *Client) do(ctx context.Context, cl call) (*response, error) {
	if c.err != nil {
		return nil, c.err
	}
	p := &c.retry
	for attempt := 1; ; attempt++ {
		res, err := c.once(ctx, cl)
		var retry bool
		var delay time.Duration
		switch {
		case err == nil && res.status == cl.want:
			return res, nil
		case err == nil:
			e := responseError(res, time.Now())
			err = e
			retry, delay = p.retryResponse(e, attempt)
		case ctx.Err() != nil:
			return nil, err // the caller stopped; err wraps ctx's error
		default:
			var pe permanentError
			if asPermanent(err, &pe) {
				return nil, pe.err
			}
			retry, delay = retryTransport(err), p.backoff(attempt)
		}
		if !retry || attempt >= p.MaxAttempts {
			return nil, err
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < delay {
			return nil, err // no point waiting past the caller's deadline
		}
		if p.OnRetry != nil {
			p.OnRetry(Retry{Method: cl.method, Path: cl.path, Attempt: attempt, Err: err, Delay: delay})
		}
		if serr := c.sleep(ctx, delay); serr != nil {
			return nil, fmt.Errorf("%w (before a retry of: %w)", serr, err)
		}
	}
}

// permanentError is a failure of the client itself: no retry helps.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }

func asPermanent(err error, pe *permanentError) bool {
	p, ok := err.(permanentError)
	*pe = p
	return ok
}

// once makes one attempt; an error is a transport error (or permanent).
func (c *Client) once(ctx context.Context, cl call) (*response, error) {
	u := c.base + cl.path
	if cl.query != "" {
		u += "?" + cl.query
	}
	var body io.Reader
	if cl.body != nil {
		body = bytes.NewReader(cl.body)
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, u, body)
	if err != nil {
		return nil, permanentError{fmt.Errorf("signrelay: %w", err)}
	}
	req.Header.Set("Authorization", "Bearer "+c.apiKey)
	req.Header.Set("Accept", "application/json")
	if cl.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if cl.idemKey != "" {
		req.Header.Set("Idempotency-Key", cl.idemKey)
	}
	if c.ua != "" {
		req.Header.Set("User-Agent", c.ua)
	}
	res, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, maxBody+1))
	if err != nil {
		return nil, fmt.Errorf("signrelay: %s %s: reading the answer: %w", cl.method, cl.path, err)
	}
	if len(b) > maxBody {
		return nil, permanentError{unexpected("%s %s: answer over %d bytes", cl.method, cl.path, maxBody)}
	}
	return &response{status: res.StatusCode, header: res.Header, body: b}, nil
}

// responseError is the *Error of an answer that is not the call's success.
func responseError(res *response, now time.Time) *Error {
	e := &Error{
		Status:     res.status,
		RetryAfter: parseRetryAfter(res.header.Get("Retry-After"), now),
		Replayed:   res.replayed(),
	}
	var w wireErrorBody
	if json.Unmarshal(res.body, &w) == nil && w.Error != nil && w.Error.Code != "" {
		e.Code, e.Message, e.RequestID = w.Error.Code, w.Error.Message, w.RequestID
		if w.Error.Reason != nil {
			e.Reason = *w.Error.Reason
		}
	} else {
		e.Message = http.StatusText(res.status)
		if s := printable(res.body, 120); s != "" {
			e.Message += ": " + s
		}
	}
	if e.RequestID == "" {
		e.RequestID = res.header.Get("X-Request-Id")
	}
	return e
}

// printable is the start of a foreign body, fit for a log line.
func printable(b []byte, n int) string {
	var sb strings.Builder
	for _, r := range string(b) {
		if sb.Len() >= n {
			sb.WriteString("…")
			break
		}
		if r < 0x20 || r == 0x7f {
			r = ' '
		}
		sb.WriteRune(r)
	}
	return strings.TrimSpace(sb.String())
}
