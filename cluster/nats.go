// Package cluster joins relay nodes through NATS (contract §A): the link to
// a NATS server (external, or embedded in the relay process), its state,
// and the limits the bus needs. The message protocol between nodes is built
// on top of Link.Conn.
package cluster

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/signrelay/signrelay/config"
)

// Timings of the link. nats.go's defaults suit short-lived clients (give
// up after 60 reconnects, ping every 2 minutes); a relay must keep trying
// and notice a dead server within seconds.
const (
	// connectWait bounds Open's first connection.
	connectWait = 10 * time.Second
	// dialTimeout bounds each TCP dial (and TLS handshake) to one server.
	dialTimeout = 2 * time.Second
	// reconnectWait (plus jitter) separates rounds of reconnect attempts.
	reconnectWait      = 250 * time.Millisecond
	reconnectJitter    = 250 * time.Millisecond
	reconnectJitterTLS = 500 * time.Millisecond
	// pingInterval × maxPingsOut: a server that stops answering is given
	// up (and another one tried) after about 4 to 6 s.
	pingInterval = 2 * time.Second
	maxPingsOut  = 2
	// routePing is how often an embedded server pings its routes and
	// clients: a silent peer is given up after 2 to 3 s.
	routePing = time.Second
	// reconnectBuf bounds what is buffered while reconnecting; a publish
	// beyond it fails at once instead of growing memory.
	reconnectBuf = 8 << 20
	// drainTimeout bounds Close's drain.
	drainTimeout = 5 * time.Second
)

// Link is the relay's connection to NATS: connecting, the embedded server
// if any, and its state. The bus publishes and subscribes through Conn;
// Ready and OnStateChange tell it (and GET /readyz) whether the rest of the
// cluster is reachable.
type Link struct {
	conn      *nats.Conn
	srv       *server.Server // nil without an embedded server
	tempDir   string         // the embedded server's JetStream directory, removed at Close
	nodeID    string
	prefix    string
	clientURL string
	need      int // MaxPayload(cfg)
	log       *slog.Logger

	closing   atomic.Bool
	closed    chan struct{} // closed by the ClosedHandler
	closeOnce sync.Once
	closeErr  error
	drainErr  atomic.Pointer[error]

	// An embedded server routed to others is only useful while at least
	// one route is up: without, this node is cut off from the relay.
	needRoutes bool
	routesUp   atomic.Bool
	stopWatch  chan struct{}
	watchDone  chan struct{}

	mu    sync.Mutex
	last  bool // readiness last reported to fns
	fns   []func(ready bool)
	lastU string // the server last connected to, for logs
}

// Enabled reports whether cfg asks for a cluster (cluster.nats_url or
// cluster.embedded.listen set). Without one, the relay is one node and
// never touches NATS.
func Enabled(cfg config.Config) bool {
	return cfg.Cluster.NATSURL != "" || cfg.Cluster.Embedded.Listen != ""
}

// MaxPayload is the largest message the bus sends for cfg: a sign_request
// or sign_response frame for a message of sign.max_message_bytes
// (cfg.MinFrameBytes) plus 4096 bytes of envelope. Open refuses a NATS
// server whose max_payload is smaller, and the embedded server is given at
// least this.
func MaxPayload(cfg config.Config) int {
	return cfg.MinFrameBytes() + 4096
}

// Open starts the embedded server if configured, connects, and returns once
// connected, or an error that names the URL after a bounded wait (10 s;
// there is no retry at start, so that a wrong address or credential stops
// the relay clearly). Once connected, the link reconnects forever. cfg is
// validated again (config.Load has done so already). log may be nil.
func Open(cfg config.Config, log *slog.Logger) (*Link, error) {
	if !Enabled(cfg) {
		return nil, errors.New("cluster: not configured (cluster.nats_url and cluster.embedded.listen are empty)")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	nodeID := cfg.Cluster.NodeID
	if nodeID == "" {
		b := make([]byte, 8)
		if _, err := rand.Read(b); err != nil {
			return nil, fmt.Errorf("cluster: no randomness for the node id: %w", err)
		}
		nodeID = hex.EncodeToString(b)
	}
	l := &Link{
		nodeID: nodeID,
		prefix: cfg.Cluster.SubjectPrefix,
		need:   MaxPayload(cfg),
		log:    log.With("component", "cluster", "node_id", nodeID),
		closed: make(chan struct{}),
		last:   true, // reported once the first connect succeeds
	}
	opts, err := l.options(cfg)
	if err != nil {
		return nil, err
	}
	url := strings.Join(cfg.Cluster.NATSURLs(), ",")
	if cfg.Cluster.Embedded.Listen != "" {
		srv, dir, err := startEmbedded(cfg, nodeID, log.With("node_id", nodeID))
		if err != nil {
			return nil, err
		}
		l.srv, l.clientURL, l.tempDir = srv, clientURL(srv), dir
		attrs := []any{"client_url", l.clientURL}
		if a := srv.ClusterAddr(); a != nil {
			attrs = append(attrs, "cluster_addr", a.String(), "routes", cfg.Cluster.Embedded.Routes)
		}
		l.log.Info("embedded NATS server started", attrs...)
		if url == "" {
			// Our own server, in-process: no socket, no port to reach.
			url = l.clientURL
			opts = append(opts, nats.InProcessServer(srv))
			if e := cfg.Cluster.Embedded; e.User != "" {
				opts = append(opts, nats.UserInfo(e.User, e.Password))
			} else if e.Token != "" {
				opts = append(opts, nats.Token(e.Token))
			}
		}
	}
	conn, err := connect(url, opts)
	if err != nil {
		l.stopServer()
		return nil, fmt.Errorf("cluster: cannot connect to NATS at %s: %w", url, err)
	}
	if got := conn.MaxPayload(); got < int64(l.need) {
		at := conn.ConnectedUrlRedacted()
		l.closing.Store(true)
		conn.Close()
		l.stopServer()
		return nil, fmt.Errorf("cluster: the NATS server at %s accepts messages of at most %d bytes, but sign.max_message_bytes %d needs %d: raise max_payload on the NATS server to at least %d, or lower sign.max_message_bytes",
			at, got, cfg.Sign.MaxMessageBytes, l.need, l.need)
	}
	l.conn = conn
	l.setURL(conn.ConnectedUrlRedacted())
	if l.srv != nil && cfg.Cluster.NATSURL == "" && routesToOthers(cfg.Cluster.Embedded) {
		l.needRoutes = true
		l.routesUp.Store(l.srv.NumRoutes() > 0)
		l.stopWatch, l.watchDone = make(chan struct{}), make(chan struct{})
		go l.watchRoutes()
	}
	l.log.Info("connected to NATS", "url", conn.ConnectedUrlRedacted(), "server", conn.ConnectedServerName(),
		"max_payload", conn.MaxPayload(), "subject_prefix", l.prefix)
	return l, nil
}

// connect makes the first connection, bounded by connectWait even when
// nats_url lists many unreachable servers; a connection that completes
// after the deadline is closed.
func connect(url string, opts []nats.Option) (*nats.Conn, error) {
	type result struct {
		conn *nats.Conn
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := nats.Connect(url, opts...)
		ch <- result{c, err}
	}()
	t := time.NewTimer(connectWait)
	defer t.Stop()
	select {
	case r := <-ch:
		return r.conn, r.err
	case <-t.C:
		go func() {
			if r := <-ch; r.conn != nil {
				r.conn.Close()
			}
		}()
		return nil, fmt.Errorf("no connection after %s", connectWait)
	}
}

// options are the nats.go options for a long-running relay, with the
// authentication and TLS of cluster.* for an external server.
func (l *Link) options(cfg config.Config) ([]nats.Option, error) {
	c := cfg.Cluster
	opts := []nats.Option{
		nats.Name("signrelay " + l.nodeID),
		// A node must not receive what it publishes itself.
		nats.NoEcho(),
		// Inboxes (request replies) under the prefix too, so that NATS
		// permissions on "<prefix>.>" are all a relay needs.
		nats.CustomInboxPrefix(l.prefix + "._INBOX"),
		nats.RetryOnFailedConnect(false),
		nats.Timeout(dialTimeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(reconnectWait),
		nats.ReconnectJitter(reconnectJitter, reconnectJitterTLS),
		// An authorization error while reconnecting (a server restarting
		// with its config half loaded) must not end the link for good.
		nats.IgnoreAuthErrorAbort(),
		nats.PingInterval(pingInterval),
		nats.MaxPingsOutstanding(maxPingsOut),
		nats.ReconnectBufSize(reconnectBuf),
		nats.DrainTimeout(drainTimeout),
		nats.DisconnectErrHandler(l.onDisconnect),
		nats.ReconnectHandler(l.onReconnect),
		nats.ClosedHandler(l.onClosed),
		nats.ErrorHandler(l.onError),
		nats.LameDuckModeHandler(func(nc *nats.Conn) {
			l.log.Info("the NATS server is shutting down (lame duck mode); moving to another one", "url", nc.ConnectedUrlRedacted())
		}),
		nats.DiscoveredServersHandler(func(nc *nats.Conn) {
			l.log.Debug("NATS servers discovered", "servers", nc.DiscoveredServers())
		}),
	}
	if c.NATSURL == "" {
		return opts, nil
	}
	switch {
	case c.CredentialsFile != "":
		opts = append(opts, nats.UserCredentials(c.CredentialsFile))
	case c.NkeyFile != "":
		o, err := nats.NkeyOptionFromSeed(c.NkeyFile)
		if err != nil {
			return nil, fmt.Errorf("cluster: cluster.nkey_file: %w", err)
		}
		opts = append(opts, o)
	case c.User != "":
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	case c.Token != "":
		opts = append(opts, nats.Token(c.Token))
	}
	if c.TLS.CAFile != "" {
		opts = append(opts, nats.RootCAs(c.TLS.CAFile))
	}
	if c.TLS.CertFile != "" {
		opts = append(opts, nats.ClientCert(c.TLS.CertFile, c.TLS.KeyFile))
	}
	return opts, nil
}

func (l *Link) setURL(u string) {
	l.mu.Lock()
	l.lastU = u
	l.mu.Unlock()
}

func (l *Link) lastURL() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastU
}

// notify calls the OnStateChange functions if readiness changed. nats.go
// calls its handlers one at a time, in order, so notifications are too.
func (l *Link) notify(ready bool) {
	l.mu.Lock()
	if l.last == ready {
		l.mu.Unlock()
		return
	}
	l.last = ready
	fns := slices.Clone(l.fns)
	l.mu.Unlock()
	for _, f := range fns {
		f(ready)
	}
}

func (l *Link) onDisconnect(nc *nats.Conn, err error) {
	if l.closing.Load() {
		l.log.Debug("NATS connection closing", "url", l.lastURL())
	} else {
		l.log.Warn("lost the NATS connection; reconnecting", "url", l.lastURL(), "err", err)
	}
	l.notify(false)
}

func (l *Link) onReconnect(nc *nats.Conn) {
	u := nc.ConnectedUrlRedacted()
	l.setURL(u)
	if got := nc.MaxPayload(); got < int64(l.need) {
		// Servers of one NATS cluster may differ; the bus's largest
		// messages will fail on this one.
		l.log.Error("reconnected to a NATS server whose max_payload is too small for sign.max_message_bytes; raise it",
			"url", u, "max_payload", got, "needed", l.need)
	}
	l.log.Info("reconnected to NATS", "url", u, "server", nc.ConnectedServerName())
	l.notify(true)
}

func (l *Link) onClosed(nc *nats.Conn) {
	if !l.closing.Load() {
		l.log.Error("the NATS connection closed for good", "url", l.lastURL(), "err", nc.LastError())
	}
	l.notify(false)
	close(l.closed)
}

func (l *Link) onError(nc *nats.Conn, sub *nats.Subscription, err error) {
	if errors.Is(err, nats.ErrDrainTimeout) {
		l.drainErr.Store(&err)
	}
	attrs := []any{"err", err}
	if sub != nil {
		attrs = append(attrs, "subject", sub.Subject)
		if msgs, bytes, e := sub.Pending(); e == nil {
			attrs = append(attrs, "pending_msgs", msgs, "pending_bytes", bytes)
		}
	}
	l.log.Warn("NATS error", attrs...)
}

// Conn is the NATS connection, for the bus to publish and subscribe on.
// It stays the same *nats.Conn across reconnects; do not close it (Close
// does).
func (l *Link) Conn() *nats.Conn { return l.conn }

// NodeID is this node's name on the bus: cluster.node_id, or the random one
// made at Open.
func (l *Link) NodeID() string { return l.nodeID }

// Prefix is cluster.subject_prefix, which starts every subject of the bus.
func (l *Link) Prefix() string { return l.prefix }

// Ready reports whether the link is connected now (false while
// reconnecting, draining or closed, and, for an embedded server routed to
// others, while no route is up): a node that is not ready cannot know what
// other nodes hold.
func (l *Link) Ready() bool {
	return l.conn != nil && l.conn.IsConnected() && (!l.needRoutes || l.srv.NumRoutes() > 0)
}

// routeWatch is how often an embedded server's routes are looked at.
const routeWatch = 250 * time.Millisecond

// watchRoutes follows whether the embedded server has a route up, and
// reports the readiness that follows when it changes (Ready itself looks
// at the routes when asked).
func (l *Link) watchRoutes() {
	defer close(l.watchDone)
	t := time.NewTicker(routeWatch)
	defer t.Stop()
	for {
		select {
		case <-l.stopWatch:
			return
		case <-t.C:
		}
		up := l.srv.NumRoutes() > 0
		if l.routesUp.Swap(up) != up {
			if up {
				l.log.Info("NATS routes up")
			} else {
				l.log.Warn("no NATS route is up: this node is cut off from the others")
			}
			l.notify(l.Ready())
		}
	}
}

// routesToOthers reports whether e routes to a server other than itself
// (every node may carry the same list, its own address included).
func routesToOthers(e config.Embedded) bool {
	for _, r := range e.Routes {
		if !strings.HasSuffix(r, "://"+e.ClusterListen) && !strings.HasSuffix(r, "@"+e.ClusterListen) {
			return true
		}
	}
	return false
}

// OnStateChange registers f, called with the new readiness whenever it
// changes (false on a disconnect or close, true on a reconnect). Calls come
// one at a time, in order, from a nats.go callback goroutine, so f must not
// block for long. f is not called for the state at registration: read
// Ready after registering.
func (l *Link) OnStateChange(f func(ready bool)) {
	l.mu.Lock()
	l.fns = append(l.fns, f)
	l.mu.Unlock()
}

// ClientURL is the embedded server's client URL ("" without one), with a
// loopback address when it listens on every interface; for tests and logs.
func (l *Link) ClientURL() string { return l.clientURL }

// Close drains the connection (what is subscribed is delivered, what is
// published is flushed; at most 5 s) and then shuts the embedded server
// down. It is harmless to call twice; the second call returns the first's
// result.
func (l *Link) Close() error {
	l.closeOnce.Do(func() {
		l.closing.Store(true)
		if l.stopWatch != nil {
			close(l.stopWatch)
			<-l.watchDone
		}
		if l.conn != nil {
			err := l.conn.Drain()
			if err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrConnectionReconnecting) {
				l.closeErr = fmt.Errorf("cluster: draining the NATS connection: %w", err)
			}
			t := time.NewTimer(drainTimeout + time.Second)
			select {
			case <-l.closed:
			case <-t.C:
				l.conn.Close()
				l.closeErr = fmt.Errorf("cluster: draining the NATS connection: not done after %s", drainTimeout+time.Second)
			}
			t.Stop()
			if p := l.drainErr.Load(); p != nil && l.closeErr == nil {
				l.closeErr = fmt.Errorf("cluster: draining the NATS connection: %w", *p)
			}
		}
		l.stopServer()
	})
	return l.closeErr
}

func (l *Link) stopServer() {
	if l.srv != nil {
		l.srv.Shutdown()
		l.srv.WaitForShutdown()
		l.log.Info("embedded NATS server stopped")
		if l.tempDir != "" {
			_ = os.RemoveAll(l.tempDir)
		}
	}
}
