#!/usr/bin/env bash
# Benchmark: kmx build vs a plain loop of make invocations, one after another, for the
# four-target matrix, on the bundled example and on a generated multi-file module.
#
#   benches/build-matrix.sh            (after ./dev setup; uses target/release/kmx)
#
# Prints wall times, the ratio, and kmx's overhead per cell (kmx -j1 against the loop at
# -j1, where both do the same work one cell after another). Run it on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export KMX_HOME="${KMX_HOME:-$PWD/target/kmx-home}"
KMX="$PWD/target/release/kmx"
[ -x "$KMX" ] || cargo build --release --quiet
jobs=$(nproc)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A multi-file module: 24 translation units with real kernel code in them.
. "$(dirname "$0")/multi-module.sh"
multi="$work/multi"
make_multi_module "$multi"

# The four cells: target arch prefix kdir
mapfile -t cells < <("$KMX" kernels list --json | python3 -c '
import json, sys
arch = {"i386": ("x86", "i686-linux-gnu-"), "amd64": ("x86", "x86_64-linux-gnu-"),
        "arm64": ("arm64", "aarch64-linux-gnu-"), "armhf": ("arm", "arm-linux-gnueabihf-")}
for t in json.load(sys.stdin)["trees"]:
    if t["target"] in arch:
        a, p = arch[t["target"]]
        print(t["target"], a, p, t["kdir"])')

now() { date +%s.%N; }
loop() { # $1 source, $2 -j
  for c in "${cells[@]}"; do
    read -r target arch prefix kdir <<<"$c"
    rm -rf "$work/loop-$target" && cp -r "$1" "$work/loop-$target"
    make -s -C "$kdir" M="$work/loop-$target" ARCH="$arch" CROSS_COMPILE="$prefix" \
      CONFIG_DEBUG_INFO_BTF_MODULES= -j"$2" modules >/dev/null
  done
}
kmx() { # $1 source, $2 jobs
  rm -rf "$work/out"
  "$KMX" build "$1" --out "$work/out" --jobs "$2" --force --no-cache >/dev/null 2>&1
}
measure() { local t0; t0=$(now); "$@"; python3 -c "print(f'{$(now) - $t0:.2f}')"; }

printf '%-14s %10s %10s %8s %16s\n' module "loop(s)" "kmx(s)" ratio "overhead/cell"
for src in examples/hello "$multi"; do
  name=$(basename "$src")
  loop "$src" "$jobs"; kmx "$src" "$jobs"   # warm the page cache
  t_loop=$(measure loop "$src" "$jobs")
  t_kmx=$(measure kmx "$src" "$jobs")
  t_loop1=$(measure loop "$src" 1)
  t_kmx1=$(measure kmx "$src" 1)
  python3 -c "
n = ${#cells[@]}
print(f'{\"$name\":<14} {$t_loop:>10.2f} {$t_kmx:>10.2f} {$t_loop/$t_kmx:>7.2f}x {($t_kmx1-$t_loop1)/n*1000:>13.0f} ms')"
done
echo "loop: make -j$jobs per target, one target after another; kmx: kmx build --jobs $jobs"
echo "overhead/cell: (kmx --jobs 1 - loop at -j1) / cells"
