//go:build !linux

package tests

import "syscall"

// stuckMessageBytes is large elsewhere: without the Linux socket options the
// relay's send buffer for a holder that never reads may hold megabytes.
const stuckMessageBytes = 1 << 20

func stuckSocket(network, address string, c syscall.RawConn) error { return nil }
