//go:build !linux

package main

import "syscall"

// relaySysProcAttr: only Linux can tie the relay's life to the generator's.
func relaySysProcAttr() *syscall.SysProcAttr { return nil }
