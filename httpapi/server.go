// Package httpapi is the relay's network face: the Fiber app with GET /ws for
// key holders, POST /sign for backends, GET /healthz and the embedded page at
// "/". It turns the wire into calls on signing.Service and the service's
// errors into the contract's status codes.
package httpapi

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofiber/contrib/websocket"
	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/gofiber/fiber/v2/middleware/filesystem"
	"github.com/gofiber/fiber/v2/middleware/recover"

	"github.com/signrelay/signrelay/api"
	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/metrics"
	"github.com/signrelay/signrelay/protocol"
	"github.com/signrelay/signrelay/registry"
	"github.com/signrelay/signrelay/signing"
	"github.com/signrelay/signrelay/web"
)

// Server is one relay node. Create it with New, run it with Serve, stop it
// with Shutdown.
type Server struct {
	cfg     config.Config
	log     *slog.Logger
	app     *fiber.App
	reg     *registry.Registry
	svc     *signing.Service
	apiKeys [][sha256.Size]byte
	// apiOwners[i] names API key i for budgets, limits and resources: a
	// hash prefix of the key, the same on every node whatever the order
	// of api_keys. apiNames[i] is its public name ("" for a bare key).
	apiOwners, apiNames []string
	trustedProxies      []netip.Prefix
	tlsConfig           *tls.Config

	perAPIKey    *keyedLimiter // nil when rate limits are off
	perPublicKey *keyedLimiter // keyed by (API key, public key)
	perIP        *keyedLimiter
	authFailures *keyedLimiter // per client IP

	unintroduced *unintroducedCounter
	// checkedKeys remembers keys that passed PublicKey.Check (about one
	// signature verification each) for POST /sign on keys held elsewhere.
	checkedKeys *keySet
	// listener is the front door Serve wraps around its listener.
	listener atomic.Pointer[limitListener]

	// bodyLimit is the largest POST /sign body accepted (see bodyLimit()).
	bodyLimit int
	// queueLimit is websocket.send_queue, raised so that a key holder that
	// reconnects can always be handed every pending request of its key
	// (and their cancels) plus error frames.
	queueLimit int

	metrics *metrics.Metrics
	journal *Journal
	// metricsSrv serves /metrics on metrics.listen; nil when on listen.
	metricsSrv *http.Server

	draining   atomic.Bool
	ready      func() bool
	closeParts func()
	clustered  bool
	closeOnce  sync.Once

	mu sync.Mutex
	// guards the following fields
	conns     map[*holderConn]struct{} // every open WebSocket, introduced or not
	closing   bool                     // no new WebSockets are tracked
	connsDone chan struct{}            // closed when closing and conns is empty
}

// Parts are what a Server serves with, built by the caller when the relay
// is one node of several (main wires the cluster's bus into them). Zero
// Parts are built by New for one node.
type Parts struct {
	Registry *registry.Registry
	Service  *signing.Service
	// Ready reports whether the node can serve the whole API, for
	// GET /readyz: on a cluster, NATS reachable and the request store open;
	// nil means always (one node).
	Ready func() bool
	// NATSUp reports whether the node reaches the rest of the relay through
	// NATS, for the signrelay_nats_up gauge; nil means Ready.
	NATSUp func() bool
	// Close runs after the server has stopped (the bus and its link).
	Close func()
	// Clustered says that other nodes may hold keys this one does not.
	Clustered bool
	// Metrics is what the Service counts into too (NewMetrics); nil makes
	// one, for a Service built here.
	Metrics *metrics.Metrics
	// Journal is the Service's (OpenJournal), closed at Shutdown; nil
	// opens one, for a Service built here.
	Journal *Journal
}

// NewMetrics makes the relay's metrics, with every close reason of the
// connection lifecycle as a label value.
func NewMetrics() *metrics.Metrics {
	reasons := CloseReasons()
	names := make([]string, len(reasons))
	for i, r := range reasons {
		names[i] = r.String()
	}
	return metrics.New(names)
}

// NewRegistry is the registry a Server of cfg needs.
func NewRegistry(cfg config.Config) *registry.Registry {
	return registry.New(cfg.WebSocket.MaxConnectionsPerKey)
}

// ServiceOptions are the signing options cfg asks for, with bus joining a
// cluster (nil for one node).
func ServiceOptions(cfg config.Config, log *slog.Logger, bus signing.Bus) signing.Options {
	return signing.Options{
		DefaultTimeout:   cfg.Sign.DefaultTimeout.D(),
		MaxTimeout:       cfg.Sign.MaxTimeout.D(),
		MaxAsyncTimeout:  cfg.Sign.MaxAsyncTimeout.D(),
		MaxPendingPerKey: cfg.Sign.MaxPendingPerKey,
		Resources: signing.Resources{
			TTL:      cfg.Sign.ResultTTL.D(),
			MaxCount: cfg.Sign.MaxResults,
			MaxBytes: cfg.Sign.MaxResultsBytes,
		},
		Budget: signing.Budget{
			MaxPending:              cfg.Sign.MaxPending,
			MaxPendingBytes:         cfg.Sign.MaxPendingBytes,
			MaxPendingPerOwner:      cfg.Sign.MaxPendingPerAPIKey,
			MaxPendingBytesPerOwner: cfg.Sign.MaxPendingBytesPerAPIKey,
		},
		Logger: log,
		Bus:    bus,
	}
}

// New builds a one-node Server from a validated configuration.
func New(cfg config.Config, log *slog.Logger) (*Server, error) {
	return NewWithParts(cfg, log, Parts{})
}

// NewWithParts builds a Server that serves with parts; the parts left zero
// are built as for one node.
func NewWithParts(cfg config.Config, log *slog.Logger, parts Parts) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if parts.Registry == nil {
		parts.Registry = NewRegistry(cfg)
	}
	if parts.Metrics == nil {
		parts.Metrics = NewMetrics()
	}
	if parts.Service == nil {
		j, err := OpenJournal(cfg, log)
		if err != nil {
			return nil, err
		}
		parts.Journal = j
		opts := ServiceOptions(cfg, log, nil)
		opts.Metrics, opts.Journal = parts.Metrics, j
		parts.Service = signing.New(parts.Registry, opts)
	}
	if parts.Ready == nil {
		parts.Ready = func() bool { return true }
	}
	s := &Server{
		cfg:          cfg,
		log:          log,
		reg:          parts.Registry,
		svc:          parts.Service,
		ready:        parts.Ready,
		closeParts:   parts.Close,
		clustered:    parts.Clustered,
		metrics:      parts.Metrics,
		journal:      parts.Journal,
		checkedKeys:  newKeySet(checkedKeysSize),
		unintroduced: newUnintroducedCounter(cfg.WebSocket.MaxUnintroduced, cfg.WebSocket.MaxUnintroducedPerIP),
		conns:        make(map[*holderConn]struct{}),
		connsDone:    make(chan struct{}),
	}
	s.bodyLimit = bodyLimit(cfg.Sign.MaxMessageBytes)
	s.queueLimit = max(cfg.WebSocket.SendQueue, 2*cfg.Sign.MaxPendingPerKey+badFrameBurst+12)
	for _, k := range cfg.APIKeys {
		sum := sha256.Sum256([]byte(k.Key))
		s.apiKeys = append(s.apiKeys, sum)
		s.apiOwners = append(s.apiOwners, hex.EncodeToString(sum[:8]))
		s.apiNames = append(s.apiNames, k.Name)
	}
	for _, p := range cfg.TrustedProxies {
		prefix, err := config.ParsePrefix(p)
		if err != nil {
			return nil, err
		}
		s.trustedProxies = append(s.trustedProxies, prefix)
	}
	if cfg.RateLimits.Enabled {
		s.perAPIKey = newKeyedLimiter(cfg.RateLimits.SignPerAPIKey)
		s.perPublicKey = newKeyedLimiter(cfg.RateLimits.SignPerPublicKey)
		s.perIP = newKeyedLimiter(cfg.RateLimits.ConnectionsPerIP)
		s.authFailures = newKeyedLimiter(cfg.RateLimits.AuthFailuresPerIP)
	}
	if cfg.TLS.Enabled() {
		cert, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			return nil, errors.New("config: tls: " + err.Error())
		}
		s.tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	s.app = fiber.New(fiber.Config{
		AppName:               "signrelay",
		DisableStartupMessage: true,
		BodyLimit:             s.bodyLimit,
		// fasthttp's ReadTimeout runs from a request's first byte to the
		// end of its headers; onHeaders gives a body more time.
		ReadTimeout:  cfg.HTTP.HeaderTimeout.D(),
		WriteTimeout: 30 * time.Second,
		IdleTimeout:  cfg.HTTP.IdleTimeout.D(),
		ErrorHandler: s.errorHandler,
		// Release fasthttp's 4 KiB read buffer between requests, so that a
		// hijacked WebSocket does not keep it (it reads through its own).
		ReduceMemoryUsage: true,
	})
	// A key-holder connection outlives its hijack handler (hijack.go):
	// fasthttp must not close it when the handler returns. Every hijack
	// handler closes its connection itself.
	s.app.Server().KeepHijackedConns = true
	s.app.Server().HeaderReceived = s.onHeaders
	s.app.Server().Handler = s.knownMethodsOnly(s.app.Server().Handler)
	s.app.Use(s.guard)
	// A bug that panics in a handler costs that request a 500, never the
	// relay and every request it holds.
	s.app.Use(recover.New(recover.Config{EnableStackTrace: true, StackTraceHandler: func(c *fiber.Ctx, e any) {
		s.log.Error("panic in handler", "path", c.Path(), "panic", e, "stack", string(debug.Stack()))
	}}))
	s.app.Get("/healthz", s.handleHealth)
	s.app.Get("/livez", func(c *fiber.Ctx) error { return c.JSON(fiber.Map{"status": "ok"}) })
	s.app.Get("/readyz", s.handleReady)
	s.app.Get("/openapi.yaml", func(c *fiber.Ctx) error {
		c.Set(fiber.HeaderContentType, "application/yaml")
		return c.Send(api.OpenAPI)
	})
	var natsUp func() bool
	if parts.Clustered {
		natsUp = parts.NATSUp
		if natsUp == nil {
			natsUp = parts.Ready
		}
	}
	s.metrics.Gauges(s.reg.Len, s.svc.Pending, natsUp)
	if cfg.Metrics.Listen == "" {
		s.app.Get("/metrics", adaptor.HTTPHandler(s.metrics.Handler()))
	} else {
		s.metricsSrv = &http.Server{Addr: cfg.Metrics.Listen, Handler: s.metrics.Handler(), ReadHeaderTimeout: cfg.HTTP.HeaderTimeout.D()}
	}
	s.app.Post("/sign", s.handleSign)
	s.app.All("/sign", func(c *fiber.Ctx) error {
		c.Set(fiber.HeaderAllow, fiber.MethodPost)
		return writeError(c, fiber.StatusMethodNotAllowed, codeMethodNotAllowed, "use POST /sign", "")
	})
	s.app.Get("/sign/:id", s.handleGetRequest)
	s.app.Delete("/sign/:id", s.handleCancelRequest)
	s.app.All("/sign/:id", func(c *fiber.Ctx) error {
		c.Set(fiber.HeaderAllow, "GET, DELETE")
		return writeError(c, fiber.StatusMethodNotAllowed, codeMethodNotAllowed, "use GET or DELETE /sign/{request_id}", "")
	})
	s.app.Get("/ws", s.checkUpgrade, websocket.New(s.handleWS, websocket.Config{
		RecoverHandler: s.recoverHandler,
		// A sign_response for a 32-byte message is 244 bytes with its
		// frame header: 256 reads it in one system call, and idle
		// connections hold 256 bytes each instead of 1024. A larger
		// frame takes a second read; its payload goes straight into the
		// message buffer, past this one.
		ReadBufferSize:  256,
		WriteBufferSize: 1024,
		// Idle connections hold no write buffer.
		WriteBufferPool: &sync.Pool{},
	}))
	s.app.Use("/", securityHeaders, filesystem.New(filesystem.Config{
		Root:  http.FS(web.Files),
		Index: "index.html",
	}))
	s.app.Use(func(c *fiber.Ctx) error { return fiber.ErrNotFound })
	return s, nil
}

// bodyLimit admits a body carrying the largest allowed message in base64
// plus the other fields, so that larger messages get a clear 413.
func bodyLimit(maxMessage int) int {
	return (maxMessage+2)/3*4 + 16<<10
}

func securityHeaders(c *fiber.Ctx) error {
	c.Set("Content-Security-Policy", "default-src 'self'; connect-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")
	c.Set("X-Content-Type-Options", "nosniff")
	c.Set("Referrer-Policy", "no-referrer")
	// Revalidate every time, so that an upgraded relay never pairs a cached
	// old script with a new page.
	c.Set("Cache-Control", "no-cache")
	return c.Next()
}

// Registry exposes the registry of live key holders, for benchmarks and
// operators embedding the server.
func (s *Server) Registry() *registry.Registry { return s.reg }

// Serve accepts connections on ln until Shutdown; with TLS configured it
// serves HTTPS and WSS. It puts the front door's rules around ln: at most
// http.max_connections open (by default derived from the open-file limit)
// and http.max_connections_per_ip from one address, accept errors retried,
// and a deadline on every connection's first bytes.
func (s *Server) Serve(ln net.Listener) error {
	limit := s.cfg.HTTP.MaxConnections
	if limit == 0 {
		limit = defaultMaxConnections()
	}
	if s.metricsSrv != nil {
		mln, err := net.Listen("tcp", s.metricsSrv.Addr)
		if err != nil {
			return fmt.Errorf("metrics.listen: %w", err)
		}
		s.log.Info("metrics listening", "addr", mln.Addr().String())
		go func() { _ = s.metricsSrv.Serve(mln) }()
	}
	front := newLimitListener(ln, limit, s.cfg.HTTP.MaxConnectionsPerIP, s.trustedProxies, s.cfg.HTTP.HeaderTimeout.D(), s.log)
	s.listener.Store(front)
	s.log.Debug("connection limit", "max_connections", limit)
	ln = front
	if s.tlsConfig != nil {
		ln = tls.NewListener(ln, s.tlsConfig)
	}
	return s.app.Listener(ln)
}

// handleReady says whether this node should get traffic: not while it
// shuts down, and not while it cannot reach the rest of the relay.
func (s *Server) handleReady(c *fiber.Ctx) error {
	switch {
	case s.draining.Load():
		return writeError(c, fiber.StatusServiceUnavailable, codeUnavailable, "the relay is shutting down", "")
	case !s.ready():
		return writeError(c, fiber.StatusServiceUnavailable, codeUnavailable, "this node cannot reach the rest of the relay (NATS), or its request store is not open yet", "")
	}
	return c.JSON(fiber.Map{"status": "ok"})
}

func (s *Server) handleHealth(c *fiber.Ctx) error {
	if s.draining.Load() {
		return c.Status(fiber.StatusServiceUnavailable).JSON(fiber.Map{"status": "shutting_down"})
	}
	return c.JSON(fiber.Map{"status": "ok"})
}

// Shutdown stops the relay without losing a request silently: health turns
// 503 and new work is refused; pending requests get up to shutdown_grace to
// finish; the rest end with 503 and sign_cancel "shutdown"; key-holder
// sockets close with 1001; then the HTTP server stops. ctx bounds the whole.
// Calling it again is harmless.
func (s *Server) Shutdown(ctx context.Context) error {
	s.draining.Store(true)
	grace, cancel := context.WithTimeout(ctx, s.cfg.ShutdownGrace.D())
	finished := s.svc.Drain(grace)
	cancel()
	if !finished {
		s.log.Info("shutdown grace over; cancelling pending requests", "pending", s.svc.Pending())
	}
	s.svc.Close()

	s.mu.Lock()
	if !s.closing && len(s.conns) == 0 {
		close(s.connsDone)
	}
	s.closing = true
	conns := make([]*holderConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Close(protocol.CloseGoingAway, "relay shutting down", ReasonShutdown)
	}
	select {
	case <-s.connsDone:
	case <-ctx.Done():
	}
	err := s.app.ShutdownWithContext(ctx)
	if s.metricsSrv != nil {
		_ = s.metricsSrv.Shutdown(ctx)
	}
	if l := s.listener.Load(); l != nil {
		l.waitLingering(ctx.Done())
	}
	if s.closeParts != nil {
		s.closeOnce.Do(s.closeParts)
	}
	if cerr := s.journal.Close(); cerr != nil {
		s.log.Error("closing the audit log", "err", cerr)
	}
	return err
}

// track registers an open WebSocket for shutdown; false once closing.
func (s *Server) track(c *holderConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c *holderConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.conns[c]; !ok {
		return
	}
	delete(s.conns, c)
	if s.closing && len(s.conns) == 0 {
		close(s.connsDone)
	}
}
