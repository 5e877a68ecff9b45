#!/usr/bin/env bash
# Benchmark: a no-op rebuild (every cell fresh) of the bundled example's default matrix (every
# tree of every default target), kmx against make's own up-to-date check of the same cells:
# `make modules` in each cell's already built directory, run the way kmx runs that cell's
# make, one cell after another.
#
#   [RUNS=10] benches/noop-rebuild.sh        (after ./dev setup; uses target/release/kmx)
#
# How make runs is read from kmx's own plan, so the bench cannot drift from kmx:
# `kmx build --dry-run -v` prints each cell's sandbox command (bubblewrap's words, without
# its seccomp filter, which bubblewrap reads from a descriptor kmx passes) and the variables
# of its environment. A cell whose compiler lives in a toolchain root (Debian 13's gcc-14 on a
# Debian 12 host) has that root as its `/`, as in kmx's own build. The built directories are
# kmx's own (`--keep-build-dir`, without the build cache and the compiler cache, so that
# `vars:` names the compiler the build used), and every make run is checked to be a real
# no-op: it exits 0, prints no kbuild step (`  CC [M]`, `  LD [M]`, `  MODPOST`, ...) and
# writes no file in any cell's directory. Anything else stops the bench, naming the cell and
# showing make's output.
#
# Runs them in turn (kmx, make, kmx, make, ...) RUNS times and prints the median wall time of
# each (whole processes: kmx's planning included), the run-by-run ratios and their median,
# and kmx's median CPU time (its children included). Also prints the first run after a new
# kmx binary (nothing kept yet: every dkms.conf evaluated, the sandbox probed, the compilers
# asked their version), and the load average before and after.
set -uo pipefail
cd "$(dirname "$0")/.."
export KMX_HOME="${KMX_HOME:-$PWD/target/kmx-home}"
KMX="$PWD/target/release/kmx"
[ -x "$KMX" ] || cargo build --release --quiet || exit 1
runs="${RUNS:-10}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=examples/hello
out="$work/out" # kmx's no-op runs
mk="$work/mk"   # the directories make's no-op runs in
TIMEFORMAT='%3R %3U %3S'

fail() {
  printf 'noop-rebuild: %s\n' "$1" >&2
  [ -n "${2:-}" ] && [ -s "$2" ] && sed 's/^/  | /' "$2" >&2
  exit 1
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
load_before=$(load)

# kmx: build once; every later run is a no-op.
"$KMX" build "$src" --out "$out" > "$work/kmx.out" 2>&1 ||
  fail "kmx build $src --out $out (the first build) exited $?" "$work/kmx.out"
# make: each cell built once by kmx, its build directory kept.
"$KMX" build "$src" --out "$mk" --no-cache --no-compiler-cache --keep-build-dir \
  > "$work/mk.out" 2>&1 ||
  fail "kmx build $src --out $mk --keep-build-dir exited $?" "$work/mk.out"
"$KMX" build "$src" --out "$mk" --no-compiler-cache --dry-run -v > "$work/plan" 2> "$work/plan.err" ||
  fail "kmx build --dry-run -v exited $?" "$work/plan.err"

# One script per cell from the plan: kmx's environment for the step (its own variables on a
# clean environment holding what kmx passes through) and the sandbox command.
pass=()
for v in PATH HOME USER; do [ -n "${!v:-}" ] && pass+=("$v=$(printf '%q' "${!v}")"); done
cells=0 label='' view=''
labels=()
while IFS= read -r line; do
  case "$line" in
    'jobserver: '* | 'sandbox: '* | *' to build, '*' skipped') ;;
    '  skip: '*) fail "the plan skips $label:${line#*:}" "$work/plan" ;;
    '  view:    '*) view=${line#'  view:    '} ;;
    '  vars:    '*)
      [ -n "$view" ] || fail "the plan gives no sandbox command for $label (is bubblewrap usable?)" "$work/plan"
      cells=$((cells + 1))
      labels[cells]=$label
      printf 'exec env -i %s LC_ALL=C TMPDIR=/tmp %s %s\n' "${pass[*]}" "${line#'  vars:    '}" "$view" \
        > "$work/cell-$cells.sh"
      view='' ;;
    '  '*) ;;
    *) label=$line ;;
  esac
done < "$work/plan"
[ "$cells" -gt 0 ] || fail "the plan has no cell" "$work/plan"

# make's no-op over every cell, one after another: the sum of the makes' wall times into
# $make_wall. Each run is checked (see the top).
make_noop() {
  local i t w=0 stamp="$work/stamp" changed
  : > "$stamp"
  sleep 0.01 # a later write gets a later modification time
  for ((i = 1; i <= cells; i++)); do
    { time bash "$work/cell-$i.sh" > "$work/make-$i.out" 2>&1; } 2> "$work/make.time" ||
      fail "make in ${labels[i]} exited with an error" "$work/make-$i.out"
    read -r t _ < "$work/make.time"
    w=$(echo "$w + $t" | bc)
    grep -qE '^  [A-Z]+ ' "$work/make-$i.out" &&
      fail "make in ${labels[i]} was not a no-op: it ran kbuild steps" "$work/make-$i.out"
  done
  changed=$(find "$mk/.work" -newer "$stamp" -not -type d | head -5)
  [ -z "$changed" ] || {
    for ((i = 1; i <= cells; i++)); do cat "$work/make-$i.out"; done > "$work/make-all.out"
    fail "make was not a no-op: it wrote $(echo "$changed" | tr '\n' ' ')" "$work/make-all.out"
  }
  make_wall=$w
}
kmx_noop() {
  { time "$KMX" build "$src" --out "$out" > "$work/kmx.out" 2>&1; } 2> "$work/kmx.time" ||
    fail "kmx's no-op run exited with an error" "$work/kmx.out"
  grep -q "0 built, $cells fresh" "$work/kmx.out" ||
    fail "kmx's run was not a no-op (expected: 0 built, $cells fresh)" "$work/kmx.out"
}
# Not counted: the first of each (kmx keeps its findings; the page cache warms).
kmx_noop
make_noop

kmx_t=() kmx_cpu=() make_t=() ratios=()
for ((r = 1; r <= runs; r++)); do
  kmx_noop
  make_noop
  read -r k u s < "$work/kmx.time"
  kmx_t+=("$k") kmx_cpu+=("$(echo "$u + $s" | bc)") make_t+=("$make_wall")
  ratios+=("$(echo "$make_wall / $k" | bc -l)")
  printf 'run %2d: kmx %.3f s wall, %.3f CPU-s; make %.3f s; ratio %.1fx\n' \
    "$r" "$k" "${kmx_cpu[-1]}" "$make_wall" "${ratios[-1]}"
done
roots=$(grep -c '^  root: ' "$work/plan")
printf 'cells: %d (every tree of every default target; %d of them built in a toolchain root)\n' \
  "$cells" "$roots"
printf 'kmx build, no-op:      %.3f s wall, %.3f CPU-s (medians of %d)\n' \
  "$(median "${kmx_t[@]}")" "$(median "${kmx_cpu[@]}")" "$runs"
printf 'make modules, no-op:   %.3f s wall (median of %d, the %d cells one after another)\n' \
  "$(median "${make_t[@]}")" "$runs" "$cells"
printf 'ratio: kmx is %.1fx faster (median of the %d run-by-run ratios)\n' "$(median "${ratios[@]}")" "$runs"

# The first no-op run after a new kmx binary keeps nothing from before: measured with a copy
# of the binary (a new file: every kept evaluation's key names the binary).
cp "$KMX" "$work/kmx-new"
{ time "$work/kmx-new" build "$src" --out "$out" > "$work/kmx.out" 2>&1; } 2> "$work/kmx.time" ||
  fail "the new binary's no-op run exited with an error" "$work/kmx.out"
grep -q "0 built, $cells fresh" "$work/kmx.out" ||
  fail "the new binary's run was not a no-op" "$work/kmx.out"
read -r k _ < "$work/kmx.time"
printf 'first no-op run of a new kmx binary: %.3f s\n' "$k"
printf 'load average: %s before, %s after\n' "$load_before" "$(load)"
