//go:build !unix

package httpapi

// defaultMaxConnections has no open-file limit to derive from here.
func defaultMaxConnections() int { return 1 << 14 }
