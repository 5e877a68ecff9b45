#!/usr/bin/env python3
"""Per-cell table of the corpus run: DKMS's result against kmx's, for every package x target.

    table.py --run target/dkms-corpus/run --dkms-secs S --kmx-secs S [--jobs N]

Reads run/packages, run/cells, run/trees.json, run/dkms/<pkg>/<target>/{status,modules/},
run/kmx-report.json and run/src (through the report's cells). A cell agrees when both
builders skipped it, both failed it, or both built it with the same set of .ko names and
every .ko on both sides carries exactly the tree's vermagic. Exit 1 if any cell differs.
"""
import argparse
import json
import os
import subprocess
import sys


def vermagic(path):
    out = subprocess.run(["modinfo", "-F", "vermagic", path], capture_output=True, text=True)
    return out.stdout.rstrip("\n") if out.returncode == 0 else None


def ko_names(files):
    return sorted(os.path.basename(f).split(".ko")[0] for f in files)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--dkms-secs", type=float, required=True)
    ap.add_argument("--kmx-secs", type=float, required=True)
    ap.add_argument("--dkms-cpu", type=float)
    ap.add_argument("--kmx-cpu", type=float)
    ap.add_argument("--cpu-how", default="time")
    ap.add_argument("--jobs", default="2")
    ap.add_argument("--src", help="the extracted packages (default: <run>/../src)")
    a = ap.parse_args()
    run = a.run

    packages = open(os.path.join(run, "packages")).read().split()
    cells = [line.split() for line in open(os.path.join(run, "cells")) if line.strip()]
    targets = [c[0] for c in cells]
    # The tree of each target's cell (its release): a target may have trees of several.
    release_of = {c[0]: c[1] for c in cells}
    trees = {t["target"]: t for t in json.load(open(os.path.join(run, "trees.json")))["trees"]
             if t.get("release") == release_of.get(t["target"])}
    src_root = a.src or os.path.join(os.path.dirname(run), "src")
    # kmx names a cell by PACKAGE_NAME and PACKAGE_VERSION; the source directory
    # usr/src/<name>-<version> says which package that is.
    by_dir = {}
    for p in packages:
        for d in os.listdir(os.path.join(src_root, p, "usr", "src")):
            by_dir[d] = p
    try:
        report = json.load(open(os.path.join(run, "kmx-report.json")))
    except (OSError, ValueError) as e:
        report = {"cells": []}
        print(f"warning: no kmx report ({e}); see {run}/kmx-build.log", file=sys.stderr)
    kmx = {}
    for c in report.get("cells", []):
        p = by_dir.get(f"{c['module']}-{c['version']}", c["module"])
        kmx[(p, c["target"])] = c

    rows, details = [], []
    tot = {"dkms": {}, "kmx": {}, "agree": 0, "differ": 0}
    for p in packages:
        for t in targets:
            want = trees[t]["vermagic"]
            cell_dir = os.path.join(run, "dkms", p, t)
            try:
                st = open(os.path.join(cell_dir, "status")).read().split()
            except OSError:
                st = ["missing"]
            d_status = st[0]
            d_files = []
            if os.path.isdir(os.path.join(cell_dir, "modules")):
                d_files = [os.path.join(cell_dir, "modules", f)
                           for f in sorted(os.listdir(os.path.join(cell_dir, "modules")))]
            c = kmx.get((p, t))
            k_status = c["status"] if c else "missing"
            if k_status in ("fresh", "restored"):
                k_status = "built"
            k_files = [x["file"] for x in (c.get("artifacts") or [])] if c else []
            k_files = [f for f in k_files if ".ko" in os.path.basename(f)]

            d_ko, k_ko = ko_names(d_files), ko_names(k_files)
            bad_vm = []
            for side, files in (("dkms", d_files), ("kmx", k_files)):
                for f in files:
                    vm = vermagic(f)
                    if vm != want:
                        bad_vm.append(f"{side} {os.path.basename(f)}: {vm!r}")
            if d_status == "built" and k_status == "built":
                kos = "same" if d_ko == k_ko else "DIFFER"
            elif d_ko or k_ko:
                kos = f"{len(d_ko)}/{len(k_ko)}"
            else:
                kos = "-"
            vm = "ok" if not bad_vm else "BAD"
            if d_status not in ("built",) and k_status not in ("built",):
                vm = "-" if not (d_files or k_files) else vm
            agree = d_status == k_status and kos in ("same", "-") and not bad_vm
            tot["dkms"][d_status] = tot["dkms"].get(d_status, 0) + 1
            tot["kmx"][k_status] = tot["kmx"].get(k_status, 0) + 1
            tot["agree" if agree else "differ"] += 1
            d_show = " ".join(st) if d_status == "failed" else d_status
            try:
                d_secs = f"{float(open(os.path.join(cell_dir, 'secs')).read()):.1f}"
            except (OSError, ValueError):
                d_secs = "-"
            k_secs = f"{c['duration_secs']:.1f}" if c and c.get("duration_secs") is not None else "-"
            rows.append((p, t, d_show, k_status, f"{len(d_ko)}/{len(k_ko)}", kos, vm,
                         d_secs, k_secs, "agree" if agree else "DIFFER"))
            if not agree:
                lines = [f"{p} {t}: DKMS {d_show}, kmx {k_status}"]
                if d_ko != k_ko:
                    only_d = sorted(set(d_ko) - set(k_ko))
                    only_k = sorted(set(k_ko) - set(d_ko))
                    if only_d:
                        lines.append(f"  only DKMS built: {' '.join(only_d)}")
                    if only_k:
                        lines.append(f"  only kmx built: {' '.join(only_k)}")
                lines += [f"  vermagic {b}" for b in bad_vm]
                if c:
                    if c.get("reason"):
                        lines.append(f"  kmx {c.get('stage', '')}: {c['reason']}")
                    for e in (c.get("errors") or [])[:3]:
                        lines.append(f"  kmx: {e}")
                    if c.get("log"):
                        lines.append(f"  kmx log: {c['log']}")
                lines.append(f"  DKMS log: {cell_dir}/dkms.log, make.log")
                details.append("\n".join(lines))

    head = ("PACKAGE", "TARGET", "DKMS", "KMX", "KO d/k", "KO SET", "VERMAGIC", "DKMS s",
            "KMX s", "CELL")
    w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{n}}}" for n in w)
    print(fmt.format(*head).rstrip())
    for r in rows:
        print(fmt.format(*r).rstrip())
    print()
    for d in details:
        print(d)
    if details:
        print()

    def counts(m):
        return ", ".join(f"{m.get(k, 0)} {k}" for k in ("built", "skipped", "failed")) + "".join(
            f", {v} {k}" for k, v in m.items() if k not in ("built", "skipped", "failed"))

    n = len(rows)
    ratio = a.dkms_secs / a.kmx_secs if a.kmx_secs else float("nan")
    print(f"{len(packages)} packages x {len(targets)} targets = {n} cells")
    print(f"DKMS: {counts(tot['dkms'])}")
    print(f"kmx:  {counts(tot['kmx'])}")
    print(f"cells: {tot['agree']} agree, {tot['differ']} differ")
    print(f"wall time: DKMS {a.dkms_secs:.1f}s ({a.jobs} cells at a time), "
          f"kmx {a.kmx_secs:.1f}s (--jobs {a.jobs}): DKMS/kmx = {ratio:.2f}x")
    if a.dkms_cpu is not None and a.cpu_how == "cgroup":
        ratio = a.dkms_cpu / a.kmx_cpu if a.kmx_cpu else float("nan")
        print(f"CPU time: DKMS {a.dkms_cpu:.1f}s, kmx {a.kmx_cpu:.1f}s (every process of each "
              f"run, from a cgroup of its own): DKMS/kmx = {ratio:.2f}x")
    elif a.dkms_cpu is not None:
        # kmx's steps run under bubblewrap, whose monitor exits without reaping the PID
        # namespace's init: their CPU time never reaches kmx's rusage, so GNU time cannot
        # measure kmx (it reports kmx's own process only).
        print(f"CPU time: DKMS {a.dkms_cpu:.1f}s (user + system, GNU time); kmx's own process "
              f"{a.kmx_cpu:.1f}s, its sandboxed steps not measurable this way (no cgroup)")
    return 1 if tot["differ"] else 0


if __name__ == "__main__":
    sys.exit(main())
