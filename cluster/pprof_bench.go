//go:build signrelay_pprof

package cluster

// Profiling for benchmarks only: a binary built with -tags signrelay_pprof
// serves net/http/pprof on SIGNRELAY_PPROF (host:port, loopback) when it is
// set. No normal build has this file; scripts/bench-cluster.sh uses it with
// BENCH_PROFILE=1.

import (
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof on http.DefaultServeMux
	"os"
)

func init() {
	if addr := os.Getenv("SIGNRELAY_PPROF"); addr != "" {
		go func() { _ = http.ListenAndServe(addr, nil) }()
	}
}
