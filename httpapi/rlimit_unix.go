//go:build unix

package httpapi

import "syscall"

// defaultMaxConnections derives http.max_connections from the open-file
// limit: all of it but a tenth (at least 64) kept for the relay's own
// files, listeners and outgoing connections.
func defaultMaxConnections() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == 0 || rl.Cur > 1<<24 {
		return 1 << 16
	}
	n := int(rl.Cur)
	return max(n-max(64, n/10), 16)
}
