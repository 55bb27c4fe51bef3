package tests

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if any test leaves a goroutine behind: every relay
// the tests start is shut down, and nothing it ran may outlive it. Two
// fasthttp internals are exempt: the worker pool's cleaner, which sleeps up
// to 10 s before it sees the pool stopped, and the process-wide Date header
// updater.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
	)
}
