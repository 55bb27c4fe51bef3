package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/httpapi"
)

// runRelay runs the relay exactly as the signrelay binary wires it
// (config.Load, httpapi.New, Serve on the configured address), with a CPU
// profile running from start to stop, and a heap profile written on SIGUSR1
// (to -memprofile) and at stop (to -memprofile plus ".atstop"). The relay has no pprof endpoint of its own; this mode exists
// so that a profile can be taken under a real, out-of-process load.
func runRelay(path, cpuProfile, memProfile string, memRate int) error {
	if memRate > 0 {
		runtime.MemProfileRate = memRate
	}
	cfg, err := config.Load(path, true, os.Getenv)
	if err != nil {
		return err
	}
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	srv, err := httpapi.New(cfg, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "profiled relay listening on %s (pid %d)\n", ln.Addr(), os.Getpid())
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGUSR1)
	for stop := false; !stop; {
		select {
		case err := <-serveErr:
			pprof.StopCPUProfile()
			return err
		case sig := <-sigs:
			if sig == syscall.SIGUSR1 {
				if err := writeHeap(memProfile); err != nil {
					fmt.Fprintln(os.Stderr, "heap profile:", err)
				}
				continue
			}
			stop = true
		}
	}
	pprof.StopCPUProfile()
	atStop := ""
	if memProfile != "" {
		atStop = memProfile + ".atstop"
	}
	if err := writeHeap(atStop); err != nil {
		fmt.Fprintln(os.Stderr, "heap profile:", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace.D()+10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// writeHeap prints the runtime's memory figures and, when path is set,
// writes a heap profile (in-use objects as of a fresh GC).
func writeHeap(path string) error {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	fmt.Fprintf(os.Stderr, "memstats: goroutines %d, HeapInuse %d KiB, HeapAlloc %d KiB, StackInuse %d KiB, Sys %d KiB, HeapObjects %d\n",
		runtime.NumGoroutine(), m.HeapInuse>>10, m.HeapAlloc>>10, m.StackInuse>>10, m.Sys>>10, m.HeapObjects)
	fmt.Fprintf(os.Stderr, "memstats: HeapIdle %d KiB (HeapReleased %d KiB), MSpanInuse %d KiB, GCSys %d KiB, OtherSys %d KiB, BuckHashSys %d KiB\n",
		m.HeapIdle>>10, m.HeapReleased>>10, m.MSpanInuse>>10, m.GCSys>>10, m.OtherSys>>10, m.BuckHashSys>>10)
	if path == "" {
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.Lookup("heap").WriteTo(f, 0)
}
