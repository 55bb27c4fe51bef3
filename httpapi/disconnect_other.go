//go:build !linux

package httpapi

import "net"

// watchDisconnect is a no-op where the Linux socket peek is not available:
// a backend that goes away is then noticed only at the request's deadline.
func watchDisconnect(net.Conn, func()) (stop func()) { return func() {} }

// watchesSockets: watchDisconnect sees a backend go away on this platform.
const watchesSockets = false
