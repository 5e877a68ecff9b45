#!/usr/bin/env bash
# Benchmark: a no-op rebuild (every cell fresh) of the bundled example's default matrix (every
# tree of every default target: 9 cells with Debian 12's 6.1 and the 6.12 backports), kmx
# against plain make's own up-to-date check of the same cells (`make modules` in each cell's
# already built directory, with the variables kmx passes, one cell after another).
#
#   [RUNS=10] benches/noop-rebuild.sh        (after ./dev setup; uses target/release/kmx)
#
# Runs them in turn (kmx, make, kmx, make, ...) RUNS times and prints the median wall time of
# each (whole process: planning included), the median of the run-by-run ratios, and kmx's
# median CPU time. Also prints the first run after a new kmx binary (nothing kept yet: every
# dkms.conf evaluated, the sandbox probed, the compilers asked their version).
set -euo pipefail
cd "$(dirname "$0")/.."
export KMX_HOME="${KMX_HOME:-$PWD/target/kmx-home}"
KMX="$PWD/target/release/kmx"
[ -x "$KMX" ] || cargo build --release --quiet
runs="${RUNS:-10}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=examples/hello
out="$work/out"
now() { date +%s.%N; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# kmx: build once; its evaluations are then kept. The plan gives each cell's make variables.
"$KMX" build "$src" --out "$out" >/dev/null 2>&1
"$KMX" build "$src" --out "$out" --dry-run > "$work/plan" 2>/dev/null
# make: one built directory per cell, built once by plain make with the same variables.
cells=0
while read -r what rest; do
  case "$what" in
    kdir:) kdir=$rest ;;
    vars:)
      cells=$((cells + 1))
      dir="$work/make-$cells"
      cp -r "$src" "$dir"
      printf '%s\n%s\n' "$kdir" "$rest" > "$dir.cell"
      eval "vars=($rest)"
      make -s -C "$kdir" M="$dir" "${vars[@]}" modules >/dev/null 2>&1 ;;
  esac
done < "$work/plan"
make_noop() {
  for ((i = 1; i <= cells; i++)); do
    { read -r kdir; read -r line; } < "$work/make-$i.cell"
    eval "vars=($line)"
    make -s -C "$kdir" M="$work/make-$i" "${vars[@]}" modules >/dev/null 2>&1
  done
}
kmx_noop() { "$KMX" build "$src" --out "$out" > "$work/kmx.out" 2>&1; }
grep -q "0 built, $cells fresh" "$work/kmx.out" 2>/dev/null || kmx_noop
grep -q "0 built, $cells fresh" "$work/kmx.out" || { cat "$work/kmx.out"; echo "not a no-op" >&2; exit 1; }

kmx_t=(); make_t=(); ratios=(); kmx_cpu=()
for _ in $(seq "$runs"); do
  t0=$(now)
  /usr/bin/time -f '%U %S' -o "$work/kmx.time" "$KMX" build "$src" --out "$out" > "$work/kmx.out" 2>&1
  t1=$(now)
  make_noop
  t2=$(now)
  grep -q "0 built, $cells fresh" "$work/kmx.out" || { cat "$work/kmx.out"; exit 1; }
  k=$(echo "$t1 - $t0" | bc); m=$(echo "$t2 - $t1" | bc)
  kmx_t+=("$k"); make_t+=("$m"); ratios+=("$(echo "$m / $k" | bc -l)")
  read -r u s < "$work/kmx.time"; kmx_cpu+=("$(echo "$u + $s" | bc)")
done
printf 'cells: %d (every tree of every default target)\n' "$cells"
printf 'kmx build, no-op:      %.3f s wall, %.3f CPU-s (medians of %d)\n' \
  "$(median "${kmx_t[@]}")" "$(median "${kmx_cpu[@]}")" "$runs"
printf 'make modules, no-op:   %.3f s wall (median of %d, the %d cells one after another)\n' \
  "$(median "${make_t[@]}")" "$runs" "$cells"
printf 'ratio: kmx is %.1fx faster (median of the %d run-by-run ratios)\n' "$(median "${ratios[@]}")" "$runs"

# The first no-op run after a new kmx binary keeps nothing from before: measured with a copy
# of the binary (a new file: every kept evaluation's key names the binary).
cp "$KMX" "$work/kmx-new"
t0=$(now)
"$work/kmx-new" build "$src" --out "$out" > "$work/kmx.out" 2>&1
printf 'first no-op run of a new kmx binary: %.3f s\n' "$(echo "$(now) - $t0" | bc)"
