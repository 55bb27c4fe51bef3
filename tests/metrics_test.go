package tests

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/protocol"
)

// scrape returns the metrics exposition at url.
func scrape(t *testing.T, url string) string {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET %s: %d %s", url, res.StatusCode, res.Header.Get("Content-Type"))
	}
	return string(b)
}

// metricValue is the value of the sample named exactly series (with its
// labels), or -1 when it is absent.
func metricValue(text, series string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

// awaitMetric scrapes until series has value want, bounded.
func awaitMetric(t *testing.T, url, series string, want float64) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		got := metricValue(scrape(t, url), series)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v, want %v", series, got, want)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, bounded
	}
}

// §D: every family from the start, with its label values at zero; the
// counters follow what happens; no label carries a key.
func TestMetrics(t *testing.T) {
	r := startRelay(t, nil)
	url := r.base + "/metrics"
	text := scrape(t, url)
	for _, series := range []string{
		`signrelay_holder_connections`, `signrelay_sign_pending`,
		`signrelay_sign_requests_total{code="ok"}`, `signrelay_sign_requests_total{code="not_connected"}`,
		`signrelay_sign_requests_total{code="unauthorized"}`, `signrelay_sign_requests_total{code="rejected"}`,
		`signrelay_sign_duration_seconds_count`,
		`signrelay_rate_limited_total{scope="api_key"}`, `signrelay_rate_limited_total{scope="public_key"}`, `signrelay_rate_limited_total{scope="client_ip"}`,
		`signrelay_introductions_total{result="ok"}`, `signrelay_introductions_total{result="failed"}`,
		`signrelay_holder_disconnects_total{reason="peer_closed"}`, `signrelay_holder_disconnects_total{reason="slow_reader"}`,
		`signrelay_send_queue_overflows_total`, `signrelay_idempotent_replays_total`,
	} {
		if v := metricValue(text, series); v != 0 {
			t.Errorf("%s = %v at start, want 0", series, v)
		}
	}
	for _, family := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if !strings.Contains(text, "\n"+family+" ") {
			t.Errorf("no %s", family)
		}
	}

	h := r.connect(t, nil)
	awaitMetric(t, url, `signrelay_holder_connections`, 1)
	awaitMetric(t, url, `signrelay_introductions_total{result="ok"}`, 1)
	msg := []byte("counted")
	ch := r.signAsync(signBody(h.pub, msg, nil))
	req := h.expect(protocol.TypeSignRequest)
	awaitMetric(t, url, `signrelay_sign_pending`, 1)
	h.approve(req)
	verifyResult(t, awaitResp(t, ch), h.pub, msg)
	_, other := newKey(t)
	expectError(t, r.post(signBody(other.Public().(ed25519.PublicKey), msg, nil)), 404, "not_connected")
	expectError(t, r.postAuth("Bearer wrong-key-0123456789abcdef", signBody(h.pub, msg, nil)), 401, "unauthorized")
	idem := map[string]string{"Idempotency-Key": "metrics-" + b64(h.pub)[:8]}
	res := r.mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, msg, nil), idem)
	h.expect(protocol.TypeSignRequest)
	r.mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, msg, nil), idem)
	r.mustCall(t, "DELETE", "/sign/"+res.str("request_id"), testAPIKey, nil, nil)

	text = scrape(t, url)
	for series, want := range map[string]float64{
		`signrelay_sign_requests_total{code="ok"}`:            3,
		`signrelay_sign_requests_total{code="not_connected"}`: 1,
		`signrelay_sign_requests_total{code="unauthorized"}`:  1,
		`signrelay_idempotent_replays_total`:                  1,
		`signrelay_sign_duration_seconds_count`:               2,
		`signrelay_sign_pending`:                              0,
	} {
		if got := metricValue(text, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	h.expectCancel(res.str("request_id"), protocol.CancelCancelled)
	// A backend that goes away is counted as requester_gone, not ok.
	ctx, cancel := context.WithCancel(context.Background())
	gone := make(chan error, 1)
	go func() {
		_, err := r.call(ctx, "POST", "/sign", testAPIKey, signBody(h.pub, []byte("abandoned"), nil), nil)
		gone <- err
	}()
	h.expect(protocol.TypeSignRequest)
	cancel()
	<-gone
	awaitMetric(t, url, `signrelay_sign_requests_total{code="requester_gone"}`, 1)
	awaitMetric(t, url, `signrelay_sign_requests_total{code="ok"}`, 3)

	h.conn.Close()
	awaitMetric(t, url, `signrelay_holder_connections`, 0)
	deadline := time.Now().Add(wait)
	for {
		// A socket closed without a close frame ends as peer_closed or
		// read_error, depending on what the reader saw first.
		text = scrape(t, url)
		ended := metricValue(text, `signrelay_holder_disconnects_total{reason="peer_closed"}`) +
			metricValue(text, `signrelay_holder_disconnects_total{reason="read_error"}`)
		if ended == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v disconnects counted, want 1", ended)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, bounded
	}
	for _, secret := range []string{testAPIKey, b64(h.pub), b64(msg)} {
		if strings.Contains(text, secret) {
			t.Fatalf("the metrics carry %q", secret)
		}
	}
}

// metrics.listen moves /metrics off the public listener.
func TestMetricsOwnListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	r := startRelay(t, func(c *config.Config) { c.Metrics.Listen = addr })
	deadline := time.Now().Add(wait)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("metrics listener not up")
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, bounded
	}
	if v := metricValue(scrape(t, fmt.Sprintf("http://%s/metrics", addr)), "signrelay_sign_pending"); v != 0 {
		t.Fatalf("signrelay_sign_pending %v on the metrics listener", v)
	}
	res, err := http.Get(r.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound {
		t.Fatalf("/metrics on the public listener: %d, want 404", res.StatusCode)
	}
}

// A 429 is counted under its scope.
func TestMetricsRateLimited(t *testing.T) {
	r := startRelay(t, func(c *config.Config) {
		c.RateLimits.Enabled = true
		c.RateLimits.SignPerAPIKey = config.Limit{Rate: 0.001, Burst: 1}
	})
	pub, _ := newKey(t)
	body := signBody(pub, []byte("limited"), nil)
	expectError(t, r.post(body), 404, "not_connected")
	expectError(t, r.post(body), 429, "rate_limited")
	text := scrape(t, r.base+"/metrics")
	for series, want := range map[string]float64{
		`signrelay_rate_limited_total{scope="api_key"}`:      1,
		`signrelay_rate_limited_total{scope="public_key"}`:   0,
		`signrelay_sign_requests_total{code="rate_limited"}`: 1,
	} {
		if got := metricValue(text, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
}
