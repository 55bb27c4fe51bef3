// Package metrics is the relay's Prometheus instrumentation: one registry
// of its own (with the Go and process collectors), the families of the
// contract (§D) and the ones an operator needs to see trouble coming. It
// only counts: the packages that see the events call it, and it imports
// none of them. Every labelled family is created with all its label values
// at zero, so that dashboards and alerts see it before the first event, and
// no label ever carries a key, an API key or a message.
//
// A nil *Metrics is valid and counts nothing, so that tests and embedders
// may leave it out.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Codes are the values of the code label of signrelay_sign_requests_total:
// "ok" for a 200 or 202, else the answer's error.code.
var Codes = []string{
	"ok", "invalid_request", "unauthorized", "rejected", "not_connected", "message_too_large",
	"rate_limited", "invalid_signature", "unavailable", "timeout", "cancelled",
	"idempotency_key_reused", "requester_gone", "internal_error",
}

// Scopes are the values of the scope label of signrelay_rate_limited_total.
var Scopes = []string{"api_key", "public_key", "client_ip"}

// IntroductionResults are the values of the result label of
// signrelay_introductions_total.
var IntroductionResults = []string{"ok", "failed", "timeout", "too_many_connections", "abandoned"}

// Metrics holds every family. Create it with New.
type Metrics struct {
	reg *prometheus.Registry

	signRequests  *prometheus.CounterVec
	signDuration  prometheus.Histogram
	rateLimited   *prometheus.CounterVec
	introductions *prometheus.CounterVec
	disconnects   *prometheus.CounterVec
	queueDrops    prometheus.Counter
	replays       prometheus.Counter
	busMessages   *prometheus.CounterVec

	// Children resolved once, so that the hot path is an atomic add.
	busIn, busOut prometheus.Counter
	codes         map[string]prometheus.Counter
	scopes        map[string]prometheus.Counter
	intros        map[string]prometheus.Counter
	reasons       map[string]prometheus.Counter
}

// New makes the families; closeReasons are every value of the reason label
// of signrelay_holder_disconnects_total (the typed close reasons of the
// connection lifecycle).
func New(closeReasons []string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.signRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "signrelay_sign_requests_total",
		Help: "POST /sign calls answered by this node, by code: ok for a 200 or 202, else the answer's error.code.",
	}, []string{"code"})
	m.signDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "signrelay_sign_duration_seconds",
		Help:    "Time from POST /sign to the end of the request, for the requests this node ran.",
		Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600},
	})
	m.rateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "signrelay_rate_limited_total",
		Help: "Calls refused with 429 by a rate limit, by scope.",
	}, []string{"scope"})
	m.introductions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "signrelay_introductions_total",
		Help: "Key-holder introductions, by result.",
	}, []string{"result"})
	m.disconnects = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "signrelay_holder_disconnects_total",
		Help: "Key-holder connections that ended, by close reason.",
	}, []string{"reason"})
	m.queueDrops = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "signrelay_send_queue_overflows_total",
		Help: "Key-holder connections closed because their send queue was full (a peer that does not read).",
	})
	m.replays = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "signrelay_idempotent_replays_total",
		Help: "POST /sign calls answered from an earlier request with the same Idempotency-Key.",
	})
	m.busMessages = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "signrelay_bus_messages_total",
		Help: "Messages on the cluster bus, by direction (in, out).",
	}, []string{"direction"})
	m.reg.MustRegister(m.signRequests, m.signDuration, m.rateLimited, m.introductions, m.disconnects, m.queueDrops, m.replays, m.busMessages)
	m.codes = children(m.signRequests, Codes)
	m.scopes = children(m.rateLimited, Scopes)
	m.intros = children(m.introductions, IntroductionResults)
	m.reasons = children(m.disconnects, closeReasons)
	bus := children(m.busMessages, []string{"in", "out"})
	m.busIn, m.busOut = bus["in"], bus["out"]
	return m
}

func children(v *prometheus.CounterVec, values []string) map[string]prometheus.Counter {
	out := make(map[string]prometheus.Counter, len(values))
	for _, s := range values {
		out[s] = v.WithLabelValues(s)
	}
	return out
}

// Gauges registers the gauges that are read when scraped: introduced
// connections, pending requests and, on a cluster (natsUp non-nil), the
// NATS link.
func (m *Metrics) Gauges(connections, pending func() int, natsUp func() bool) {
	if m == nil {
		return
	}
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "signrelay_holder_connections",
		Help: "Introduced key-holder connections on this node.",
	}, func() float64 { return float64(connections()) }))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "signrelay_sign_pending",
		Help: "Requests pending on this node.",
	}, func() float64 { return float64(pending()) }))
	if natsUp != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "signrelay_nats_up",
			Help: "1 while this node can reach the rest of the cluster through NATS, else 0.",
		}, func() float64 {
			if natsUp() {
				return 1
			}
			return 0
		}))
	}
}

// Handler serves the text exposition of the registry.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Answered counts a POST /sign answer with code ("ok" for 200 and 202).
func (m *Metrics) Answered(code string) {
	if m == nil {
		return
	}
	if c, ok := m.codes[code]; ok {
		c.Inc()
		return
	}
	m.codes["internal_error"].Inc()
}

// Ended observes how long a request lived, in seconds.
func (m *Metrics) Ended(seconds float64) {
	if m != nil {
		m.signDuration.Observe(seconds)
	}
}

// RateLimited counts a 429 of scope.
func (m *Metrics) RateLimited(scope string) {
	if m == nil {
		return
	}
	if c, ok := m.scopes[scope]; ok {
		c.Inc()
	}
}

// Introduction counts an introduction's result.
func (m *Metrics) Introduction(result string) {
	if m == nil {
		return
	}
	if c, ok := m.intros[result]; ok {
		c.Inc()
	}
}

// Disconnected counts a key-holder connection's end by its close reason.
func (m *Metrics) Disconnected(reason string) {
	if m == nil {
		return
	}
	if c, ok := m.reasons[reason]; ok {
		c.Inc()
	}
}

// QueueOverflow counts a connection closed for a full send queue.
func (m *Metrics) QueueOverflow() {
	if m != nil {
		m.queueDrops.Inc()
	}
}

// Replayed counts an idempotent replay.
func (m *Metrics) Replayed() {
	if m != nil {
		m.replays.Inc()
	}
}

// BusIn counts a message the cluster bus received.
func (m *Metrics) BusIn() {
	if m != nil {
		m.busIn.Inc()
	}
}

// BusOut counts a message the cluster bus sent.
func (m *Metrics) BusOut() {
	if m != nil {
		m.busOut.Inc()
	}
}
