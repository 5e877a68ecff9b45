#!/usr/bin/env python3
"""Per-cell table of the corpus run: DKMS's result against kmx's, for every package x target.

    table.py --run target/dkms-corpus/run --dkms-secs S --kmx-secs S [--jobs N]

Reads run/packages, run/cells, run/trees.json, run/dkms/<pkg>/<target>/{status,modules/},
run/kmx-report.json and run/src (through the report's cells). A cell agrees when both
builders skipped it, both failed it, or both built it with the same set of .ko names,
every .ko on both sides carries exactly the tree's vermagic, and each module of one side
matches the other's in srcversion, depends, ELF machine, whether it has BTF (.BTF) and its
code (the bytes of its executable sections) (the MODULES column). Exit 1 if any cell differs.
"""
import argparse
import gzip
import hashlib
import json
import lzma
import os
import struct
import subprocess
import sys


def vermagic(path):
    out = subprocess.run(["modinfo", "-F", "vermagic", path], capture_output=True, text=True)
    return out.stdout.rstrip("\n") if out.returncode == 0 else None


def ko_bytes(path):
    """A module's ELF bytes, decompressed (.ko.xz, .ko.gz, .ko.zst)."""
    if path.endswith(".xz"):
        return lzma.open(path).read()
    if path.endswith(".gz"):
        return gzip.open(path).read()
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", path], capture_output=True, check=True).stdout
    return open(path, "rb").read()


def elf_facts(data):
    """(machine, has .BTF, sha256 of the code: every executable section, .text, .init.text,
    .exit.text..., by name) of an ELF relocatable (32 or 64 bit, either byte order)."""
    if data[:4] != b"\x7fELF":
        return ("not ELF", False, "")
    c64, end = data[4] == 2, "<" if data[5] == 1 else ">"
    machine = struct.unpack_from(end + "H", data, 18)[0]
    if c64:
        shoff, = struct.unpack_from(end + "Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)
    else:
        shoff, = struct.unpack_from(end + "I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x2E)

    def section(i):
        o = shoff + i * shentsize
        if c64:
            name, _, flags, _, off, size = struct.unpack_from(end + "IIQQQQ", data, o)
        else:
            name, _, flags, _, off, size = struct.unpack_from(end + "IIIIII", data, o)
        return name, flags, off, size

    _, _, stroff, _ = section(shstrndx)
    names, code = set(), []
    for i in range(shnum):
        n, flags, off, size = section(i)
        nm = data[stroff + n:data.index(b"\0", stroff + n)].decode()
        names.add(nm)
        if flags & 0x4:  # SHF_EXECINSTR
            code.append((nm, data[off:off + size]))
    h = hashlib.sha256()
    for nm, b in sorted(code):
        h.update(nm.encode() + b"\0" + b)
    return (machine, ".BTF" in names, h.hexdigest()[:16])


def module_facts(path):
    """What must match between the two builders' copies of one module."""
    info = {}
    for field in ("srcversion", "depends"):
        out = subprocess.run(["modinfo", "-F", field, path], capture_output=True, text=True)
        info[field] = out.stdout.strip()
    try:
        info["machine"], info["btf"], info["code"] = elf_facts(ko_bytes(path))
    except (OSError, ValueError, struct.error, subprocess.CalledProcessError) as e:
        info["machine"] = f"unreadable: {e}"
    return info


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
    mods_checked, btf_mods = [0], [0]
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
            # Module by module, what the other builder's copy must match.
            bad_mod = []
            if d_status == "built" and k_status == "built" and d_ko == k_ko:
                d_by = {ko_names([f])[0]: f for f in d_files}
                for f in k_files:
                    m = ko_names([f])[0]
                    dk, kk = module_facts(d_by[m]), module_facts(f)
                    for field in ("srcversion", "depends", "machine", "btf", "code"):
                        if dk.get(field) != kk.get(field):
                            bad_mod.append(f"{m}: {field} DKMS {dk.get(field)!r}, kmx {kk.get(field)!r}")
                    mods_checked[0] += 1
                    btf_mods[0] += bool(kk.get("btf"))
            mods = "same" if d_status == "built" and k_status == "built" and not bad_mod else "-"
            if bad_mod:
                mods = "DIFFER"
            vm = "ok" if not bad_vm else "BAD"
            if d_status not in ("built",) and k_status not in ("built",):
                vm = "-" if not (d_files or k_files) else vm
            agree = d_status == k_status and kos in ("same", "-") and not bad_vm and not bad_mod
            tot["dkms"][d_status] = tot["dkms"].get(d_status, 0) + 1
            tot["kmx"][k_status] = tot["kmx"].get(k_status, 0) + 1
            tot["agree" if agree else "differ"] += 1
            d_show = " ".join(st) if d_status == "failed" else d_status
            try:
                d_secs = f"{float(open(os.path.join(cell_dir, 'secs')).read()):.1f}"
            except (OSError, ValueError):
                d_secs = "-"
            k_secs = f"{c['duration_secs']:.1f}" if c and c.get("duration_secs") is not None else "-"
            rows.append((p, t, d_show, k_status, f"{len(d_ko)}/{len(k_ko)}", kos, vm, mods,
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
                lines += [f"  module {b}" for b in bad_mod]
                if c:
                    if c.get("reason"):
                        lines.append(f"  kmx {c.get('stage', '')}: {c['reason']}")
                    for e in (c.get("errors") or [])[:3]:
                        lines.append(f"  kmx: {e}")
                    if c.get("log"):
                        lines.append(f"  kmx log: {c['log']}")
                lines.append(f"  DKMS log: {cell_dir}/dkms.log, make.log")
                details.append("\n".join(lines))

    head = ("PACKAGE", "TARGET", "DKMS", "KMX", "KO d/k", "KO SET", "VERMAGIC", "MODULES",
            "DKMS s", "KMX s", "CELL")
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
    print(f"modules built by both: {mods_checked[0]}, each the same in srcversion, depends, ELF "
          f"machine, BTF and code (executable sections) unless listed above; {btf_mods[0]} of them with .BTF")
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
