#!/usr/bin/env bash
# Benchmark: `kmx verify` with every check over a whole Debian linux-image module tree,
# against ONE `modinfo -F vermagic` call given all the files, in the same run. Also checks
# that kmx reports, for every module, exactly the vermagic modinfo prints.
#
#   benches/verify-tree.sh [ARCH] [ABI]     (default: amd64 6.1.0-50; after `kmx kernels fetch`)
#
# Fetches linux-image-<ABI>-<flavour> with kmx's private apt state (KMX_HOME/apt), extracts
# it to a temporary directory, and prints both times, the ratio and kmx's peak memory.
set -euo pipefail
cd "$(dirname "$0")/.."
arch="${1:-amd64}"
abi="${2:-6.1.0-50}"
case "$arch" in
  amd64) flavour=amd64 ;; arm64) flavour=arm64 ;; i386) flavour=686-pae ;; armhf) flavour=armmp ;;
  *) echo "unknown arch $arch (amd64, arm64, i386, armhf)" >&2; exit 2 ;;
esac
export KMX_HOME="${KMX_HOME:-$PWD/target/kmx-home}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --quiet --bin kmx
KMX="$CARGO_TARGET_DIR/release/kmx"
[ -f "$KMX_HOME/apt/apt.conf" ] || { echo "no private apt state in $KMX_HOME/apt: run kmx kernels fetch first" >&2; exit 3; }
release="$abi-$flavour"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg="linux-image-$release:$arch"
(cd "$work" && APT_CONFIG="$KMX_HOME/apt/apt.conf" apt-get download -q "$pkg" >/dev/null 2>&1) ||
  (cd "$work" && APT_CONFIG="$KMX_HOME/apt/apt.conf" apt-get download -q "linux-image-$release-unsigned:$arch" >/dev/null)
dpkg -x "$work"/linux-image-*.deb "$work/root"
tree="$work/root/lib/modules/$release"
find "$tree" -name '*.ko*' | sort > "$work/files"
count=$(wc -l < "$work/files")
echo "$pkg: $count modules"

# Warm the page cache for both, then time each three times and keep the best of each (the
# machine is shared: the minimum is the least disturbed run).
cat $(cat "$work/files") > /dev/null
now() { date +%s.%N; }
best() { printf '%s\n' "$@" | sort -g | head -1; }
kmx_runs=(); modinfo_runs=()
for _ in 1 2 3; do
  t0=$(now)
  /usr/bin/time -f %M -o "$work/kmx.mem" "$KMX" verify --target "$arch" --kernel "$release" "$tree" \
    > "$work/kmx.out" || { cat "$work/kmx.out" >&2; echo "kmx verify failed" >&2; exit 1; }
  t1=$(now)
  modinfo -F vermagic $(cat "$work/files") > /dev/null
  t2=$(now)
  kmx_runs+=("$(echo "$t1 - $t0" | bc)"); modinfo_runs+=("$(echo "$t2 - $t1" | bc)")
done
# Not timed: the JSON report, and modinfo over the files in kmx's order, to compare the
# vermagic of every module line by line.
"$KMX" verify --target "$arch" --kernel "$release" --json "$tree" > "$work/kmx.json" 2> /dev/null
jq -r '.modules[].path' "$work/kmx.json" > "$work/kmx.paths"
modinfo -F vermagic $(cat "$work/kmx.paths") > "$work/modinfo.out"

kmx_s=$(best "${kmx_runs[@]}")
modinfo_s=$(best "${modinfo_runs[@]}")
tail -1 "$work/kmx.out"
printf 'kmx verify (all checks): %.3f s (best of 3), peak memory %d MB\n' "$kmx_s" $(( $(cat "$work/kmx.mem") / 1024 ))
printf 'modinfo -F vermagic:     %.3f s (best of 3, one call over all files)\n' "$modinfo_s"
printf 'ratio: kmx is %.2fx faster\n' "$(echo "$modinfo_s / $kmx_s" | bc -l)"

# Same vermagic for every module, in the same (sorted) order.
jq -r '.modules[].vermagic' "$work/kmx.json" > "$work/kmx.vermagic"
if diff -q "$work/kmx.vermagic" "$work/modinfo.out" > /dev/null; then
  echo "vermagic: identical to modinfo's for all $count modules"
else
  echo "vermagic DIFFERS from modinfo's:"; diff "$work/kmx.vermagic" "$work/modinfo.out" | head; exit 1
fi
failed=$(jq '.totals.failed' "$work/kmx.json")
[ "$failed" = 0 ] || { echo "$failed modules failed verification"; exit 1; }
