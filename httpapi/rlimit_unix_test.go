//go:build unix

package httpapi

import (
	"syscall"
	"testing"
)

func TestDefaultMaxConnectionsLeavesHeadroom(t *testing.T) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Skip(err)
	}
	n := defaultMaxConnections()
	if uint64(n) >= rl.Cur || uint64(n) < rl.Cur*8/10 {
		t.Fatalf("max connections %d for an open-file limit of %d", n, rl.Cur)
	}
}
