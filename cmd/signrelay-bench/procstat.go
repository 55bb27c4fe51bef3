package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

// clockTicks is the kernel's USER_HZ, the unit of utime and stime in
// /proc/PID/stat, read from the auxiliary vector (AT_CLKTCK); 100 if absent.
var clockTicks = func() int64 {
	const atClkTck = 17
	b, err := os.ReadFile("/proc/self/auxv")
	if err == nil {
		for i := 0; i+16 <= len(b); i += 16 {
			if binary.LittleEndian.Uint64(b[i:]) == atClkTck {
				if v := int64(binary.LittleEndian.Uint64(b[i+8:])); v > 0 {
					return v
				}
			}
		}
	}
	return 100
}()

// procCPU returns the CPU time (user + system) a process has used, from
// /proc/PID/stat.
func procCPU(pid int) (time.Duration, error) {
	u, s, err := procUserSys(pid)
	return u + s, err
}

// procUserSys returns a process's user and system CPU time, from
// /proc/PID/stat (fields 14 and 15, in clock ticks).
func procUserSys(pid int) (user, sys time.Duration, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The command name is in parentheses and may hold spaces: split after it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, errors.New("unreadable /proc/PID/stat")
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, 0, errors.New("short /proc/PID/stat")
	}
	ut, err1 := strconv.ParseInt(string(f[11]), 10, 64)
	st, err2 := strconv.ParseInt(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, errors.New("unreadable utime/stime in /proc/PID/stat")
	}
	tick := int64(time.Second) / clockTicks
	return time.Duration(ut * tick), time.Duration(st * tick), nil
}

// selfCPU returns this process's CPU time (user + system), from getrusage,
// which has microsecond resolution.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procStatusKB returns a "kB" field of /proc/PID/status, such as VmRSS.
func procStatusKB(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	v, err := parseStatusKB(b, field)
	if err != nil {
		return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
	}
	return v, nil
}

// procFDs counts a process's open file descriptors.
func procFDs(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(ents)
}

// raiseFileLimit lifts the soft RLIMIT_NOFILE to the hard limit and returns it.
func raiseFileLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
	return rl.Cur
}

// cpuWindow samples the relay's and this process's CPU time.
type cpuSample struct {
	at    time.Time
	busy  time.Duration // every CPU's busy time, whole machine
	total time.Duration // every CPU's total time
	relay time.Duration // -1 when no pid was given or it could not be read
	rsys  time.Duration // the relay's system (kernel) share of relay
	self  time.Duration
	extra []procTime // the -pids processes, in their order
}

// procTime is one process's CPU time in a sample.
type procTime struct {
	pid      int
	cpu, sys time.Duration // cpu -1 when it could not be read
}

func sampleCPU(pid int, more ...procRef) cpuSample {
	s := cpuSample{at: time.Now(), relay: -1, self: selfCPU()}
	s.busy, s.total = machineCPU()
	if pid > 0 {
		if u, sys, err := procUserSys(pid); err == nil {
			s.relay, s.rsys = u+sys, sys
		}
	}
	for _, p := range more {
		t := procTime{pid: p.pid, cpu: -1}
		if u, sys, err := procUserSys(p.pid); err == nil {
			t.cpu, t.sys = u+sys, sys
		}
		s.extra = append(s.extra, t)
	}
	return s
}

// procNames labels the -pids processes: the name given with NAME=PID, else
// the process's command name (/proc/PID/comm) and its pid, so that two
// processes of one binary stay apart.
func procNames(ps []procRef) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		switch {
		case p.name != "":
			out[i] = p.name
		default:
			comm := "pid"
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p.pid)); err == nil && len(bytes.TrimSpace(b)) > 0 {
				comm = string(bytes.TrimSpace(b))
			}
			out[i] = fmt.Sprintf("%s/%d", comm, p.pid)
		}
	}
	return out
}

// machineCPU returns the time all CPUs spent busy and in total, from the
// "cpu" line of /proc/stat (busy is everything but idle and iowait).
func machineCPU() (busy, total time.Duration) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	if len(f) < 5 || string(f[0]) != "cpu" {
		return 0, 0
	}
	var sum, idle int64
	for i, v := range f[1:] {
		if i >= 8 { // guest time is already counted in user
			break
		}
		n, _ := strconv.ParseInt(string(v), 10, 64)
		sum += n
		if i == 3 || i == 4 {
			idle += n
		}
	}
	tick := int64(time.Second) / clockTicks
	return time.Duration((sum - idle) * tick), time.Duration(sum * tick)
}
