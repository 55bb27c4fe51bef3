package cluster

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/signrelay/signrelay/config"
)

// startWait bounds the embedded server's start (listeners open).
const startWait = 10 * time.Second

// embeddedOptions builds the nats-server options for cluster.embedded.
// Validation (config.Validate) has already checked every value.
func embeddedOptions(cfg config.Config, nodeID string) (*server.Options, error) {
	e := cfg.Cluster.Embedded
	host, port, err := splitListen(e.Listen)
	if err != nil {
		return nil, fmt.Errorf("cluster.embedded.listen: %w", err)
	}
	payload := max(MaxPayload(cfg), 1<<20) // nats-server's default, 1 MiB, at least
	opts := &server.Options{
		ServerName: nodeID,
		Host:       host,
		Port:       port,
		// The relay handles SIGINT/SIGTERM itself; the server must not.
		NoSigs: true,
		// Logs go through our adapter (SetLoggerV2), never to stderr.
		NoLog:      true,
		MaxPayload: int32(payload),
		// A client (a relay) further behind than this is cut off as a slow
		// consumer; keep room for a few of the largest messages.
		MaxPending: max(int64(64<<20), 4*int64(payload)),
		// A peer that stops answering (a host that loses power or its
		// network, a frozen process) is given up after 2 to 3 s: its
		// interest goes with it, so the other nodes' alive checks see
		// "no responders" and take its requests over (2 checks 2 s
		// apart), inside §A.7's 10 s. nats-server's default (2 min,
		// twice) would leave them hanging for minutes.
		PingInterval: routePing,
		MaxPingsOut:  maxPingsOut,
		Username:     e.User,
		Password:     e.Password,
		// JetStream keeps request resources (async requests, idempotency
		// keys) for the whole cluster, in memory; its store directory
		// holds only the cluster's own metadata.
		JetStream:          true,
		JetStreamMaxMemory: int64(cfg.Sign.MaxResultsBytes) + int64(cfg.Sign.MaxPendingBytes) + 64<<20,
		JetStreamMaxStore:  256 << 20,
	}
	if e.Token != "" {
		opts.Authorization = e.Token
	}
	if e.ClusterListen != "" {
		chost, cport, err := splitListen(e.ClusterListen)
		if err != nil {
			return nil, fmt.Errorf("cluster.embedded.cluster_listen: %w", err)
		}
		opts.Cluster = server.ClusterOpts{
			Name: e.ClusterName, Host: chost, Port: cport,
			// The same credentials are asked of every route that connects to
			// this server and given to every route it opens.
			Username: e.User, Password: e.Password,
		}
		for i, r := range e.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, fmt.Errorf("cluster.embedded.routes[%d]: %w", i, err)
			}
			if e.User != "" {
				u.User = url.UserPassword(e.User, e.Password)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	return opts, nil
}

// splitListen turns host:port into nats-server's Host and Port, where port
// 0 means a free port (nats-server's RANDOM_PORT; its 0 means the default).
func splitListen(hostport string) (string, int, error) {
	host, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, err
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return host, port, nil
}

// startEmbedded starts the embedded server and waits, bounded, until its
// listeners are open. A listener that cannot open fails it at once, with
// the server's own message.
func startEmbedded(cfg config.Config, nodeID string, log *slog.Logger) (*server.Server, string, error) {
	opts, err := embeddedOptions(cfg, nodeID)
	if err != nil {
		return nil, "", fmt.Errorf("cluster: embedded NATS server: %w", err)
	}
	dir := cfg.Cluster.Embedded.StoreDir
	temp := dir == ""
	if temp {
		if dir, err = os.MkdirTemp("", "signrelay-jetstream-"+nodeID+"-"); err != nil {
			return nil, "", fmt.Errorf("cluster: embedded NATS server: %w", err)
		}
	}
	opts.StoreDir = dir
	if !temp {
		dir = "" // the operator's: not removed at exit
	}
	srv, err := runServer(opts, cfg, log)
	if err != nil && dir != "" {
		_ = os.RemoveAll(dir)
	}
	return srv, dir, err
}

func runServer(opts *server.Options, cfg config.Config, log *slog.Logger) (*server.Server, error) {
	var err error
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("cluster: embedded NATS server: %w", err)
	}
	sl := &serverLogger{log: log.With("component", "nats-server"), debug: cfg.LogLevel == "debug", fatal: make(chan string, 1)}
	srv.SetLoggerV2(sl, sl.debug, false, false)
	srv.Start()
	deadline := time.Now().Add(startWait)
	for !srv.ReadyForConnections(20 * time.Millisecond) {
		select {
		case msg := <-sl.fatal:
			srv.Shutdown()
			srv.WaitForShutdown()
			return nil, fmt.Errorf("cluster: embedded NATS server on %s: %s", cfg.Cluster.Embedded.Listen, msg)
		default:
		}
		if time.Now().After(deadline) {
			srv.Shutdown()
			srv.WaitForShutdown()
			return nil, fmt.Errorf("cluster: embedded NATS server on %s: not ready after %s", cfg.Cluster.Embedded.Listen, startWait)
		}
	}
	return srv, nil
}

// clientURL is srv's client URL, with a loopback address in place of an
// unspecified one (0.0.0.0, ::) so that it can be dialled.
func clientURL(srv *server.Server) string {
	u, err := url.Parse(srv.ClientURL())
	if err != nil {
		return srv.ClientURL()
	}
	if a, err := netip.ParseAddr(u.Hostname()); err == nil && a.IsUnspecified() {
		lo := "127.0.0.1"
		if a.Is6() {
			lo = "::1"
		}
		u.Host = net.JoinHostPort(lo, u.Port())
	}
	return u.String()
}

// serverLogger routes the embedded server's log to slog. Warnings and
// errors always pass (a route that fails to authenticate, a slow consumer);
// notices and debug lines only at log_level debug. nats-server's "errors"
// concern its peers and clients, not the relay, so they are logged as
// warnings; a fatal one (a listener that cannot open) is an error and also
// ends the start.
type serverLogger struct {
	log   *slog.Logger
	debug bool
	fatal chan string
}

func line(format string, v []any) string {
	return strings.TrimRight(fmt.Sprintf(format, v...), "\n")
}

// Noticef logs an informational line of the server, at log_level debug only.
func (s *serverLogger) Noticef(format string, v ...any) {
	if s.debug {
		s.log.Info(line(format, v))
	}
}

// plaintextWarning is logged by nats-server at every start when a password
// is not a bcrypt hash; the password is plain in config.yaml anyway, so the
// warning says nothing an operator can act on.
const plaintextWarning = "Plaintext passwords detected, use nkeys or bcrypt"

// Warnf logs a warning of the server.
func (s *serverLogger) Warnf(format string, v ...any) {
	if msg := line(format, v); msg != plaintextWarning || s.debug {
		s.log.Warn(msg)
	}
}

// Errorf logs an error of the server (about a peer or client) as a warning.
func (s *serverLogger) Errorf(format string, v ...any) { s.log.Warn(line(format, v)) }

// Fatalf logs a fatal error of the server and reports it to startEmbedded;
// it does not exit (nats-server's own logger would).
func (s *serverLogger) Fatalf(format string, v ...any) {
	msg := line(format, v)
	s.log.Error(msg)
	select {
	case s.fatal <- msg:
	default:
	}
}

// Debugf logs a debug line of the server, at log_level debug only.
func (s *serverLogger) Debugf(format string, v ...any) {
	if s.debug {
		s.log.Debug(line(format, v))
	}
}

// Tracef logs a protocol trace line; tracing is never turned on.
func (s *serverLogger) Tracef(format string, v ...any) {
	if s.debug {
		s.log.Debug(line(format, v))
	}
}
