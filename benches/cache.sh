#!/usr/bin/env bash
# Benchmark: the four-target matrix of a multi-file module built cold, rebuilt with nothing
# changed (no-op), after touching one source file, and after a clean with ccache warm.
#
#   benches/cache.sh          (after ./dev setup; uses target/release/kmx)
#
# Prints each time and its ratio to the cold build. Run it on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export KMX_HOME="${KMX_HOME:-$PWD/target/kmx-home}"
KMX="$PWD/target/release/kmx"
[ -x "$KMX" ] || cargo build --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export CCACHE_DIR="$work/ccache"
cache_args=(--cache-size 1G)
# A private home that knows the fetched trees, so cleaning its cache touches nothing else.
mkdir -p "$work/home/trees"
cp "$KMX_HOME/trees/registry.json" "$work/home/trees/"
# The registry's paths are relative to trees/: link each fetched sysroot.
for d in "$KMX_HOME"/trees/*/; do ln -s "$d" "$work/home/trees/$(basename "$d")"; done
export KMX_HOME="$work/home"

# The same generated multi-file module as benches/build-matrix.sh.
. "$(dirname "$0")/multi-module.sh"
src="$work/multi"
make_multi_module "$src"

now() { date +%s.%N; }
kmx() { "$KMX" build "$src" --out "$work/out" --launcher ccache "${cache_args[@]}" "$@" >/dev/null 2>&1; }
measure() { local t0; t0=$(now); "$@"; python3 -c "print(f'{$(now) - $t0:.3f}')"; }

"$KMX" cache clean >/dev/null
t_cold=$(measure kmx --force)
t_noop=$(measure kmx)
echo "/* touched */" >> "$src/part7.c"
t_touch=$(measure kmx)
"$KMX" cache clean >/dev/null
rm -rf "$work/out"
t_ccache=$(measure kmx)
python3 - <<PY
cold = $t_cold
rows = [("cold (ccache empty)", cold), ("no-op rebuild", $t_noop),
        ("one file touched", $t_touch), ("clean, ccache warm", $t_ccache)]
for name, t in rows:
    print(f"{name:<22} {t:>8.3f} s   {cold / t:>7.1f}x faster than cold")
PY
