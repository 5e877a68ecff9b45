#!/usr/bin/env python3
"""Run a command and reap every process it leaves, so that whoever waits for this one is
charged the CPU time of all of them.

    reap-all.py COMMAND [ARG...]

kmx's steps run under bubblewrap, whose monitor exits without reaping its PID namespace's
init: that init and everything under it are re-parented, and their CPU time never reaches
the rusage of whoever waits for kmx (GNU time, a benchmark harness: a one-cell build
reported 0.03 s of user time). As a child subreaper (prctl PR_SET_CHILD_SUBREAPER) this
process becomes their parent and reaps them, so their time joins its own children's time,
which its parent reads. Exits with the command's status.
"""
import ctypes
import os
import sys

PR_SET_CHILD_SUBREAPER = 36
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    sys.exit("reap-all: prctl(PR_SET_CHILD_SUBREAPER) failed: %s" % os.strerror(ctypes.get_errno()))
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
status = 0
while True:
    try:
        p, st = os.wait()
    except ChildProcessError:
        break
    if p == pid:
        status = os.waitstatus_to_exitcode(st)
sys.exit(status if status >= 0 else 128 - status)
