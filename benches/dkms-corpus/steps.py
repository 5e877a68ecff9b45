#!/usr/bin/env python3
"""Where a run's CPU goes, step by step, from a system-wide `perf record` of it.

    steps.py --perf FILE --root PID [--cells N] [--label NAME]

`perf record -a -e cpu-clock -F HZ` samples every CPU HZ times a second and records every
fork and exec (comm) of the machine; this keeps the samples of ROOT's process tree (followed
through forks, as pids are reused: a fork starts a new process of that pid), and gives each
sample a step from the sampled process's name and its ancestors' (see STEPS below). A sample
whose address is the kernel's counts as system time. The seconds are samples / HZ, per
cell = / N.
"""
import argparse
import re
import subprocess
import sys
from collections import defaultdict

COMPILER = re.compile(r"^(cc1|cc1plus|as|ld|collect2|lto1|lto-wrapper|gcc|cc)$|"
                      r"-(gcc|gcc-\d+|as|ld|ld\.bfd|cc|g\+\+)(-\d+)?$")
# A cross tool's name cut to the kernel's 15 characters (`aarch64-linux-g`, `x86_64-linux-gn`):
# the gcc driver, as or ld under make, kmx's strip outside it.
CROSS = re.compile(r"-linux-(g|gn|gnu.*)$")
STRIP = re.compile(r"(^|-)(strip|objcopy)$")
BTF = {"pahole", "resolve_btfids"}
SIGN = {"sign-file", "openssl", "kmodsign"}
SHELLS = {"sh", "bash", "dash"}


class Proc:
    __slots__ = ("parent", "comms", "kids", "pid", "start")

    def __init__(self, pid, parent, start):
        self.pid, self.parent, self.comms, self.kids = pid, parent, [], []
        self.start = start

    def ancestors(self):
        p = self.parent
        while p is not None:
            yield p
            p = p.parent

    def subtree(self):
        todo = [self]
        while todo:
            p = todo.pop()
            yield p
            todo.extend(p.kids)


def read(perf, root_pid):
    """The root's process tree and its samples: [(proc, comm, kernel?)]."""
    fork = re.compile(r"([\d.]+): PERF_RECORD_FORK\((\d+):(\d+)\):\((\d+):(\d+)\)")
    comm = re.compile(r"PERF_RECORD_COMM(?: exec)?: (.*):(\d+)/(\d+)\s*$")
    sample = re.compile(r"^\s*(.*?)\s+(\d+)/(\d+)\s+[\d.]+:\s+([0-9a-f]+)\s*$")
    live = {}  # pid -> Proc of the root's tree, while that pid is one of ours
    root = None
    samples = []
    out = subprocess.run(["perf", "script", "-i", perf, "--show-task-events",
                          "-F", "comm,pid,tid,time,ip"], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        if "PERF_RECORD_FORK" in line:
            m = fork.search(line)
            if not m:
                continue
            at, pid, tid, ppid = float(m[1]), int(m[2]), int(m[3]), int(m[4])
            if pid != tid:  # a thread: the same process
                continue
            if pid in live:
                del live[pid]  # reused
            if pid == root_pid and root is None:
                root = live[pid] = Proc(pid, None, at)
            elif ppid in live:
                p = Proc(pid, live[ppid], at)
                live[ppid].kids.append(p)
                live[pid] = p
            continue
        if "PERF_RECORD_COMM" in line:
            m = comm.search(line)
            if m and int(m[2]) in live:
                live[int(m[2])].comms.append(m[1])
            continue
        if "PERF_RECORD" in line:
            continue
        m = sample.match(line)
        if not m:
            continue
        pid = int(m[2])
        if pid == root_pid and root is None:  # the root was forked before perf started
            root = live[pid] = Proc(pid, None, 0.0)
        if pid in live:
            samples.append((live[pid], m[1], int(m[4], 16) >= 0xFFFF800000000000))
    return root, samples


def names(p):
    return set(p.comms)


def step_of(proc, comm, memo):
    """The step a sample of `comm` in `proc` is charged to."""
    if comm in {"ccache", "kmx-ccache"}:
        return "compiler cache (ccache, kmx's wrapper)"
    if comm == "kmx" or comm.startswith("kmx-"):  # kmx's threads are kmx-<role>
        return "kmx itself (plan, copy, checks, collect)"
    if comm == "bwrap":
        # kmx's namespaces: the evaluations of dkms.conf (planning), then the build's steps.
        return "sandbox set-up (bwrap)" if builds(proc, memo) else "planning (dkms.conf evaluation)"
    if COMPILER.search(comm):
        return "compile (gcc, as, ld)"
    if comm.startswith("modpost"):
        return "modpost"
    if comm in BTF:
        return "BTF (pahole, resolve_btfids)"
    if STRIP.search(comm):
        return "strip"
    if CROSS.search(comm):
        under_make = any("make" in names(p) for p in [proc] + list(proc.ancestors()))
        return "compile (gcc, as, ld)" if under_make else "strip"
    if comm in SIGN:
        return "signing"
    chain = [proc] + list(proc.ancestors())
    makes = [p for p in chain if "make" in names(p)]
    if makes:
        # Under make: kbuild's own work, or DKMS's `make clean` (the outermost make of the
        # chain compiled nothing).
        if not compiles(makes[-1], memo):
            return "make clean (nothing compiled)"
        return "kbuild (make, shell, kbuild's scripts)"
    ns = next((p for p in chain if "bwrap" in names(p)), None)
    if ns is not None:
        # A shell in one of kmx's namespaces: the build step's, or a dkms.conf's evaluation.
        return "build steps (PRE_BUILD, shells)" if builds(ns, memo) else \
            "planning (dkms.conf evaluation)"
    if any("dkms" in names(p) for p in chain):
        return "dkms itself (bash: dkms.conf, copies, bookkeeping)"
    harness = comm in SHELLS or comm in {"xargs", "unshare", "dkms-cell.sh", "python3",
                                         "mount", "cp", "awk", "date", "cat", "rm", "readlink",
                                         "realpath", "basename"} or comm.startswith("pyenv")
    return "the bench's harness" if harness else f"other ({comm})"


def builds(proc, memo):
    """Whether a namespace is one of the build's steps, not a dkms.conf's evaluation: kmx
    evaluates every cell's dkms.conf while it plans, before its first build step, so a
    namespace made from the first one that ran make on is the build's."""
    if "first" not in memo:
        root = proc
        while root.parent is not None:
            root = root.parent
        starts = [p.start for p in root.subtree() if "make" in names(p)]
        memo["first"] = min(starts) if starts else float("inf")
    return proc.start >= memo["first"] or any("make" in names(p) for p in proc.subtree())


def compiles(proc, memo):
    key = ("c", id(proc))
    if key not in memo:
        memo[key] = any(COMPILER.search(c) or CROSS.search(c) or c.startswith("modpost")
                        for p in proc.subtree() for c in names(p))
    return memo[key]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--perf", required=True)
    ap.add_argument("--root", type=int, required=True)
    ap.add_argument("--hz", type=float, required=True)
    ap.add_argument("--cells", type=int, default=1)
    ap.add_argument("--label", default="run")
    a = ap.parse_args()
    root, samples = read(a.perf, a.root)
    if root is None:
        sys.exit(f"steps.py: no process {a.root} in {a.perf}")
    memo = {}
    user, sys_ = defaultdict(int), defaultdict(int)
    by_comm = defaultdict(int)
    for proc, comm, kernel in samples:
        s = step_of(proc, comm, memo)
        (sys_ if kernel else user)[s] += 1
        by_comm[comm] += 1
    procs = sum(1 for _ in root.subtree())
    rows = sorted(set(user) | set(sys_), key=lambda s: -(user[s] + sys_[s]))
    hz, n = a.hz, max(a.cells, 1)
    print(f"{a.label}: {procs} processes, {len(samples) / hz:.1f} CPU-s sampled "
          f"({sum(sys_.values()) / hz:.1f} system); per cell over {n} cells")
    print(f"  {'step':<52} {'CPU-s':>7} {'user':>7} {'sys':>7} {'per cell':>9}")
    for s in rows:
        t = (user[s] + sys_[s]) / hz
        print(f"  {s:<52} {t:7.1f} {user[s] / hz:7.1f} {sys_[s] / hz:7.1f} {t / n:9.2f}")
    print(f"  {'processes started per cell':<52} {procs / n:31.1f}")
    top = sorted(by_comm.items(), key=lambda kv: -kv[1])[:12]
    print("  by process name: " + ", ".join(f"{c} {k / hz:.1f}" for c, k in top))


if __name__ == "__main__":
    main()
