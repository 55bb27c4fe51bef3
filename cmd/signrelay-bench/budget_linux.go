package main

import "syscall"

// relaySysProcAttr makes the kernel send the relay SIGTERM if the generator
// dies first (a signal, a closed stdout), so that no relay outlives a run.
func relaySysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
