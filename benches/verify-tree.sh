#!/usr/bin/env bash
# Benchmark: `kmx verify` with every check over a whole Debian linux-image module tree,
# against ONE `modinfo -F vermagic` call given all the files, in the same run. Also checks
# that kmx reports, for every module, exactly the vermagic modinfo prints.
#
#   [RUNS=10] benches/verify-tree.sh [ARCH] [ABI]   (default: amd64 6.1.0-50; after `kmx kernels fetch`)
#   benches/verify-tree.sh amd64 6.12.95+deb12       (Debian 12's backports: 4,228 .ko.xz)
#
# Fetches linux-image-<ABI>-<flavour> with kmx's private apt state (KMX_HOME/apt), extracts
# it to a temporary directory, and prints the median wall and CPU time of each over RUNS runs
# (default 10), the median ratio and kmx's peak memory.
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
release="$abi-$flavour"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg="linux-image-$release:$arch"
# The modules of a tree fetched with its image (`kmx kernels fetch --with-image`) are used
# where they are; otherwise the package is downloaded.
fetched=$(ls -d "$KMX_HOME"/trees/*/lib/modules/"$release" 2>/dev/null | head -1 || true)
if [ -n "$fetched" ]; then
  tree="$fetched"
else
  [ -f "$KMX_HOME/apt/apt.conf" ] || { echo "no private apt state in $KMX_HOME/apt: run kmx kernels fetch first" >&2; exit 3; }
  (cd "$work" && APT_CONFIG="$KMX_HOME/apt/apt.conf" apt-get download -q "$pkg" >/dev/null 2>&1) ||
    (cd "$work" && APT_CONFIG="$KMX_HOME/apt/apt.conf" apt-get download -q "linux-image-$release-unsigned:$arch" >/dev/null)
  dpkg -x "$work"/linux-image-*.deb "$work/root"
  tree="$work/root/lib/modules/$release"
fi
find "$tree" -name '*.ko*' | sort > "$work/files"
count=$(wc -l < "$work/files")
echo "$pkg: $count modules"

# Warm the page cache for both, then run them in turn RUNS times (default 10: kmx, modinfo,
# kmx, modinfo, ...) and report the MEDIAN of each: on a shared machine one slow or one
# lucky run must not move the figure. Each run's wall time is read around it, its CPU time
# (user + system) and peak memory are the kernel's accounting of the finished process.
runs="${RUNS:-10}"
cat $(cat "$work/files") > /dev/null
# The cold run: no module kept from before (compressed modules are decompressed, in
# parallel, and kept by content in KMX_HOME/cache/verify); the runs after it are warm.
rm -f "$KMX_HOME/cache/verify/modules.bin"
/usr/bin/time -f '%e %U %S' -o "$work/cold.time" "$KMX" verify --target "$arch" --kernel "$release" "$tree" > /dev/null 2>&1 || true
read -r cold_wall cold_u cold_s < "$work/cold.time"
now() { date +%s.%N; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
kmx_runs=(); modinfo_runs=(); kmx_cpu=(); modinfo_cpu=(); kmx_mem=(); ratios=()
for _ in $(seq "$runs"); do
  t0=$(now)
  /usr/bin/time -f '%U %S %M' -o "$work/kmx.time" "$KMX" verify --target "$arch" --kernel "$release" "$tree" \
    > "$work/kmx.out" || { cat "$work/kmx.out" >&2; echo "kmx verify failed" >&2; exit 1; }
  t1=$(now)
  /usr/bin/time -f '%U %S %M' -o "$work/modinfo.time" modinfo -F vermagic $(cat "$work/files") > /dev/null
  t2=$(now)
  k=$(echo "$t1 - $t0" | bc); m=$(echo "$t2 - $t1" | bc)
  kmx_runs+=("$k"); modinfo_runs+=("$m"); ratios+=("$(echo "$m / $k" | bc -l)")
  read -r u s mem < "$work/kmx.time"; kmx_cpu+=("$(echo "$u + $s" | bc)"); kmx_mem+=("$mem")
  read -r u s _ < "$work/modinfo.time"; modinfo_cpu+=("$(echo "$u + $s" | bc)")
done
# Not timed: the JSON report, and modinfo over the files in kmx's order, to compare the
# vermagic of every module line by line.
"$KMX" verify --target "$arch" --kernel "$release" --json "$tree" > "$work/kmx.json" 2> /dev/null
jq -r '.modules[].path' "$work/kmx.json" > "$work/kmx.paths"
modinfo -F vermagic $(cat "$work/kmx.paths") > "$work/modinfo.out"

tail -1 "$work/kmx.out"
printf 'kmx verify (all checks): %.3f s, %.3f CPU-s, peak memory %d MB (medians of %d)\n' \
  "$(median "${kmx_runs[@]}")" "$(median "${kmx_cpu[@]}")" $(( $(median "${kmx_mem[@]}" | cut -d. -f1) / 1024 )) "$runs"
printf 'modinfo -F vermagic:     %.3f s, %.3f CPU-s (medians of %d, one call over all files)\n' \
  "$(median "${modinfo_runs[@]}")" "$(median "${modinfo_cpu[@]}")" "$runs"
printf 'kmx verify, cold (nothing kept): %.3f s, %.3f CPU-s\n' "$cold_wall" "$(echo "$cold_u + $cold_s" | bc)"
printf 'ratio: kmx is %.2fx faster (median of the %d run-by-run ratios)\n' "$(median "${ratios[@]}")" "$runs"

# Same vermagic for every module, in the same (sorted) order.
jq -r '.modules[].vermagic' "$work/kmx.json" > "$work/kmx.vermagic"
if diff -q "$work/kmx.vermagic" "$work/modinfo.out" > /dev/null; then
  echo "vermagic: identical to modinfo's for all $count modules"
else
  echo "vermagic DIFFERS from modinfo's:"; diff "$work/kmx.vermagic" "$work/modinfo.out" | head; exit 1
fi
failed=$(jq '.totals.failed' "$work/kmx.json")
[ "$failed" = 0 ] || { echo "$failed modules failed verification"; exit 1; }
