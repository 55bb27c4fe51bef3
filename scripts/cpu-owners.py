#!/usr/bin/env python3
"""Split a relay CPU profile by who does the work (docs/benchmarks.md,
issue 11, "the CPU floor").

    scripts/cpu-owners.py BINARY PROFILE [REQUESTS]

Each sample goes to one owner, the first rule that applies: "verify"
when ed25519 is anywhere on its stack; "kernel:X" when its leaf is a
system call, X being the first owner above it; "runtime:gc" for the GC's
background workers; otherwise the first frame from the leaf that belongs
to our module, fasthttp, Fiber or the WebSocket libraries, so that
standard-library and runtime frames under such a frame (JSON, maps,
malloc, timers) count for it; and what is left, by the runtime's
scheduler or not. With REQUESTS (the load
run's "whole run" count) each line also says microseconds per request.
"""
import collections
import re
import subprocess
import sys


def owner(fn):
    if "ed25519" in fn:
        return "verify"
    if fn.startswith("github.com/signrelay/signrelay/"):
        return "ours"
    if "fasthttp/websocket" in fn or "contrib/websocket" in fn:
        return "websocket"
    if "valyala/fasthttp" in fn:
        return "fasthttp"
    if "gofiber/fiber" in fn:
        return "fiber"
    return None


SCHED = {"runtime.mcall", "runtime.schedule", "runtime.park_m", "runtime.goexit0", "runtime.findRunnable"}
# The runtime's own system calls, made from assembly rather than package syscall.
RUNTIME_SYSCALLS = {"runtime.futex", "runtime.tgkill", "runtime.osyield", "runtime.usleep", "runtime.madvise",
                    "runtime.nanosleep", "runtime.epollwait", "runtime.write1", "runtime.read", "runtime.mmap"}


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    raw = subprocess.run(["go", "tool", "pprof", "-raw", sys.argv[1], sys.argv[2]],
                         check=True, capture_output=True, text=True).stdout.split("\n")
    requests = float(sys.argv[3]) if len(sys.argv) > 3 else 0
    samples, locs, i = [], {}, raw.index("Samples:") + 2
    while raw[i].strip() and not raw[i].startswith("Locations"):
        m = re.match(r"\s*(\d+)\s+(\d+):\s*(.*)", raw[i])
        if m:
            samples.append((int(m.group(2)), [int(x) for x in m.group(3).split()]))
        i += 1
    cur = None
    for line in raw[raw.index("Locations") + 1:]:
        if line.startswith("Mappings"):
            break
        m = re.match(r"\s*(\d+): 0x[0-9a-f]+ M=\d+(?: (\S+))?", line)
        if m:
            cur = int(m.group(1))
            locs[cur] = [m.group(2) or "?"]
        elif line.startswith("             ") and line.strip() and cur is not None:
            locs[cur].append(line.split()[0])  # an inlined caller
    total, by = 0, collections.Counter()
    for ns, stack in samples:
        fns = [f for loc in stack for f in locs.get(loc, ["?"])]
        total += ns
        first = next((owner(f) for f in fns if owner(f)), None)
        if any(owner(f) == "verify" for f in fns):
            key = "verify"
        elif fns and (fns[0].startswith("syscall.") or "Syscall6" in fns[0] or fns[0] in RUNTIME_SYSCALLS):
            key = "kernel:" + (first or "runtime")
        elif any(f.startswith("runtime.gcBgMarkWorker") for f in fns):
            key = "runtime:gc"
        elif first:
            key = first
        elif any(f in SCHED for f in fns):
            key = "runtime:scheduler"
        else:
            key = "runtime:other"
        by[key] += ns
    for key, ns in by.most_common():
        per = f"  {ns / 1e3 / requests:6.1f} µs per request" if requests else ""
        print(f"{key:22s} {ns / 1e9:7.2f} s  {100 * ns / total:5.1f} %{per}")


if __name__ == "__main__":
    main()
