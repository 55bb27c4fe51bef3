// Command signrelay runs the signing relay: backends ask for Ed25519
// signatures with POST /sign, key holders connected over WebSocket give them.
// This file only wires configuration, logging, the server and signals.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/signrelay/signrelay/audit"
	"github.com/signrelay/signrelay/cluster"
	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/httpapi"
	"github.com/signrelay/signrelay/internal/buildinfo"
	"github.com/signrelay/signrelay/internal/healthcheck"
	"github.com/signrelay/signrelay/internal/memtrim"
	"github.com/signrelay/signrelay/signing"
)

func main() {
	// signrelay healthcheck [-config PATH] [-url URL]: probe the local
	// node's GET /readyz (for container health checks), exit 0 or 1.
	if len(os.Args) > 1 && os.Args[1] == "healthcheck" {
		os.Exit(healthcheck.Run(os.Args[2:], os.Stdout, os.Stderr, os.Getenv))
	}
	// signrelay audit verify FILE: check an audit log's hash chain.
	if len(os.Args) > 1 && os.Args[1] == "audit" {
		os.Exit(audit.Main(os.Args[2:], os.Stdout, os.Stderr))
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "signrelay:", err)
		os.Exit(1)
	}
}

func run() error {
	path := flag.String("config", "config.yaml", "configuration file (YAML)")
	version := flag.Bool("version", false, "print the version, VCS revision and Go version, and exit")
	flag.Parse()
	if *version {
		fmt.Println(buildinfo.Read())
		return nil
	}
	if flag.NArg() > 0 {
		return fmt.Errorf("unknown command %q (the commands are healthcheck and audit verify)", flag.Arg(0))
	}
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })

	cfg, err := config.Load(*path, explicit, os.Getenv)
	if err != nil {
		return err
	}
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	var handler slog.Handler = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})
	if cfg.LogFormat == "json" {
		handler = slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})
	}
	log := slog.New(handler)
	if cfg.GeneratedAPIKey {
		log.Warn("no api_keys configured; generated one for this run", "api_key", cfg.APIKeys[0].Key)
	}
	for i, k := range cfg.APIKeys {
		if len(k.Key) < 16 {
			log.Warn("api key is short and may be guessable; use 16 characters or more", "index", i)
		}
	}
	if need := cfg.MinFrameBytes(); cfg.WebSocket.MaxFrameBytes < need {
		log.Warn("websocket.max_frame_bytes is too small to answer the largest message", "have", cfg.WebSocket.MaxFrameBytes, "need", need)
	}

	// Before "listening" is logged: a SIGTERM that follows it at once must
	// already find the graceful path.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)

	srv, err := newServer(cfg, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	scheme := "http"
	if cfg.TLS.Enabled() {
		scheme = "https"
	}
	log.Info("listening", "addr", ln.Addr().String(), "url", scheme+"://"+ln.Addr().String()+"/")

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	// A quiet relay keeps less heap headroom (docs/deploy.md).
	trimCtx, stopTrim := context.WithCancel(context.Background())
	defer stopTrim()
	if !memtrim.Chosen(os.Getenv) {
		go memtrim.New(memtrim.Default, func(n uint64) {
			log.Debug("quiet: heap memory returned to the system", "bytes", n)
		}).Run(trimCtx)
	}

	select {
	case err := <-serveErr:
		return err
	case sig := <-sigs:
		log.Info("shutting down", "signal", sig.String(), "grace", cfg.ShutdownGrace.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace.D()+10*time.Second)
	defer cancel()
	go func() {
		<-sigs
		log.Warn("second signal: exiting now")
		os.Exit(1)
	}()
	if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	log.Info("stopped")
	return nil
}

// newServer wires the parts: one node by default; with a cluster
// configured, the NATS link, the bus between the nodes and the signing
// service on top of them.
func newServer(cfg config.Config, log *slog.Logger) (*httpapi.Server, error) {
	if !cluster.Enabled(cfg) {
		return httpapi.New(cfg, log)
	}
	reg := httpapi.NewRegistry(cfg)
	node, err := cluster.Join(cfg, reg, log)
	if err != nil {
		return nil, err
	}
	j, err := httpapi.OpenJournal(cfg, log)
	if err != nil {
		node.Close()
		return nil, err
	}
	m := httpapi.NewMetrics()
	node.Bus.SetMetrics(m)
	opts := httpapi.ServiceOptions(cfg, log, node.Bus)
	opts.Shared, opts.Metrics, opts.Journal = node.Store, m, j
	svc := signing.New(reg, opts)
	if err := node.Start(svc); err != nil {
		return nil, err
	}
	log.Info("cluster node", "node", node.Link.NodeID(), "nats", node.Link.ClientURL())
	return httpapi.NewWithParts(cfg, log, httpapi.Parts{
		Registry:  reg,
		Service:   svc,
		Ready:     node.Ready,
		NATSUp:    node.Link.Ready,
		Clustered: true,
		Close:     node.Close,
		Metrics:   m,
		Journal:   j,
	})
}
