#!/usr/bin/env bash
# A new kernel ABI: the real-package corpus (benches/dkms-corpus/packages.txt, the non-slow
# lines) built by kmx for one ABI of a series, then for the next one with kmx's compiler
# cache warm from the first, against a cold build of the second (no compiler cache); then
# the second ABI rebuilt from a warm cache (every cell rebuilt, --force: what a cell the
# build cache let go costs).
#
#   benches/abi-rebuild.sh [--from 6.1.0-50] [--to 6.1.0-57] [--targets a,b] [--packages a,b]
#                          [--jobs N]                            (after ./dev setup; root)
#
# Prints, per run, the CPU seconds of every process it started (from a cgroup: kmx's build
# steps run under bubblewrap, whose monitor does not reap its PID namespace's init, so no
# rusage sees them) and its wall time; the compiler cache's hits and misses of the rebuilds,
# and the translation units it served (from ccache's per-call stats_log);
# and whether every module of the warm build of the second ABI is byte-identical to the
# cold one's.
#
# Sources: the packages' extracted sources of benches/dkms-corpus.sh
# (CORPUS_DIR=target/dkms-corpus: src/<package>/usr/src/<name>-<version>, or its cache/ of
# .debs), else downloaded here with apt-get download into target/abi-rebuild/cache.
# Trees: KMX_HOME's (default target/kmx-home), read only; kmx runs with a home of its own
# under target/abi-rebuild/ whose trees/ is KMX_HOME's.
# Exit status: 0 when every module is byte-identical, 1 when one differs, 2 on a set-up error.
set -euo pipefail
cd "$(dirname "$0")/.."
KMX_HOME="${KMX_HOME:-$PWD/target/kmx-home}"
KMX="${KMX:-$PWD/target/release/kmx}"
CORPUS_DIR="${CORPUS_DIR:-$PWD/target/dkms-corpus}"
from=6.1.0-50 to=6.1.0-57 targets=i386,amd64,arm64,armhf subset="" jobs=2
while [ $# -gt 0 ]; do
  case $1 in
    --from) from=$2; shift 2 ;;
    --to) to=$2; shift 2 ;;
    --targets) targets=$2; shift 2 ;;
    --packages) subset=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
die() { echo "abi-rebuild: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "run as root (the CPU of each run is read from a cgroup of its own)"
command -v ccache >/dev/null || die "ccache is missing: apt-get install ccache"
[ -x "$KMX" ] || cargo build --release --quiet
work=$PWD/target/abi-rebuild
rm -rf "$work/run" && mkdir -p "$work/run" "$work/cache"
home=$work/run/home
mkdir -p "$home"
ln -s "$KMX_HOME/trees" "$home/trees"
export KMX_HOME=$home

# The packages and their sources.
mapfile -t packages < <(awk -v sub_="$subset" '
  /^[[:space:]]*(#|$)/ { next }
  sub_ == "" && $3 != "slow:" { print $1 }
  sub_ != "" { n = split(sub_, want, ","); for (i = 1; i <= n; i++) if (want[i] == $1) print $1 }
' benches/dkms-corpus/packages.txt)
awk '!/^[[:space:]]*(#|$)/ && $2 != "-" { print $1, $2 }' benches/dkms-corpus/packages.txt >"$work/run/needs"
for p in "${packages[@]}"; do
  for d in $(awk -v p="$p" '$1 == p { $1 = ""; print }' "$work/run/needs" | tr , ' '); do
    printf '%s\n' "${packages[@]}" | grep -qx -- "$d" || packages+=("$d")
  done
done
[ ${#packages[@]} -gt 0 ] || die "no package selected"
sources=()
for p in "${packages[@]}"; do
  d=("$CORPUS_DIR/src/$p"/usr/src/*/)
  if [ ! -f "${d[0]}dkms.conf" ]; then
    debs=("$CORPUS_DIR/cache/${p}"_*.deb)
    [ -f "${debs[-1]}" ] || debs=("$work/cache/${p}"_*.deb)
    if [ ! -f "${debs[-1]}" ]; then
      (cd "$work/cache" && apt-get download -o APT::Sandbox::User=root "$p" >/dev/null) ||
        die "apt-get download $p failed (run apt-get update first?)"
      debs=("$work/cache/${p}"_*.deb)
    fi
    mkdir -p "$work/run/src/$p" && dpkg-deb -x "${debs[-1]}" "$work/run/src/$p"
    d=("$work/run/src/$p"/usr/src/*/)
  fi
  [ -f "${d[0]}dkms.conf" ] || die "$p: no usr/src/*/dkms.conf"
  sources+=("${d[0]%/}")
done

# Each target's kernel release of both ABIs.
releases() {
  local abi=$1 k=()
  for h in "$KMX_HOME"/trees/debian-"$abi"/usr/src/linux-headers-"$abi"-*; do
    case $h in *-common) continue ;; esac
    k+=(--kernel "${h##*/linux-headers-}")
  done
  [ ${#k[@]} -gt 0 ] || die "no tree of $abi in $KMX_HOME/trees/debian-$abi"
  echo "${k[@]}"
}
read -r -a k_from <<<"$(releases "$from")"
read -r -a k_to <<<"$(releases "$to")"

# CPU seconds (user + system) of every process a command starts: a cgroup of its own.
cpu_run() {
  local out=$1 cg="" rc=0 t0
  shift
  for base in /sys/fs/cgroup/cpuacct /sys/fs/cgroup/unified /sys/fs/cgroup; do
    cg=$base/kmx-abi.$$
    if mkdir "$cg" 2>/dev/null; then
      if [ -f "$cg/cpuacct.usage" ] || [ -f "$cg/cpu.stat" ]; then break; fi
      rmdir "$cg"
    fi
    cg=""
  done
  [ -n "$cg" ] || die "no cgroup to measure CPU in"
  t0=$(date +%s.%N)
  bash -c 'echo $$ > "$1/cgroup.procs" 2>/dev/null || echo $$ > "$1/tasks"; shift; exec "$@"' _ "$cg" "$@" || rc=$?
  local wall
  wall=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
  if [ -f "$cg/cpuacct.usage" ]; then
    awk -v w="$wall" '{ printf "%.1f %s\n", $1 / 1e9, w }' "$cg/cpuacct.usage" >"$out"
  else
    awk -v w="$wall" '$1 == "usage_usec" { printf "%.1f %s\n", $2 / 1e6, w }' "$cg/cpu.stat" >"$out"
  fi
  rmdir "$cg" 2>/dev/null || true
  return $rc
}

# The compiler cache's counters over every module's directory: "HITS MISSES". -z zeroes them.
ccstats() {
  local hit=0 miss=0 d
  for d in "$home"/cache/ccache/*/; do
    [ -d "$d" ] || continue
    if [ "${1:-}" = -z ]; then
      # and log each call's input and result (ccache's stats_log: a line each, read by units)
      CCACHE_DIR=$d ccache -z >/dev/null
      rm -f "$d/calls.log" && printf 'stats_log = %s\n' "$d/calls.log" >"$d/ccache.conf"
      continue
    fi
    read -r h m < <(CCACHE_DIR=$d ccache --print-stats | awk -F'\t' '
      $1 ~ /^(direct|preprocessed)_cache_hit$/ { h += $2 } $1 == "cache_miss" { m = $2 }
      END { print h + 0, m + 0 }')
    hit=$((hit + h)) miss=$((miss + m))
  done
  [ "${1:-}" = -z ] || echo "$hit $miss"
}

# The compiles of the module's files since ccstats -z, and how many were hits: "UNITS HITS",
# from the calls ccache logged: each compile is a hit or a miss (kbuild's compiler probes,
# compiles of /dev/null or in its .tmp_ directories, left out; so are calls ccache does not
# cache: preprocessing only, a failed compile).
units() {
  cat "$home"/cache/ccache/*/calls.log 2>/dev/null | awk '
    /^# / { f = substr($0, 3); unit = (f != "" && f != "/dev/null" && f !~ /\/\.tmp_/); next }
    unit && /^(direct_|preprocessed_)cache_hit$/ { n++; h++ }
    unit && /^cache_miss$/ { n++ }
    END { print n + 0, h + 0 }'
}

build() {
  local name=$1 label=$2
  shift 2
  cpu_run "$work/run/$name.cpu" "$KMX" build "${sources[@]}" --target "$targets" --jobs "$jobs" \
    --no-cache --json --out "$work/run/$name" "$@" >"$work/run/$name.json" 2>"$work/run/$name.log" || true
  read -r cpu wall <"$work/run/$name.cpu"
  local t
  t=$(python3 -c 'import json, sys; t = json.load(open(sys.argv[1]))["totals"]; print("%d built, %d skipped, %d failed" % (t["built"], t["skipped"], t["failed"]))' "$work/run/$name.json" 2>/dev/null || echo "no report")
  printf '%-44s %7.1f CPU-s %7.1f s wall  (%s)\n' "$label" "$cpu" "$wall" "$t"
}

echo "== ${#sources[@]} packages x $targets, --jobs $jobs; $from then $to"
build cold-from "$from, compiler cache empty:" "${k_from[@]}"
ccstats -z
build warm-to "$to, compiler cache warm from $from:" "${k_to[@]}"
read -r hit_to miss_to < <(ccstats)
read -r tu_to tuhit_to < <(units)
build cold-to "$to, no compiler cache (cold):" "${k_to[@]}" --no-compiler-cache
ccstats -z
build again-to "$to again (--force), cache warm:" "${k_to[@]}" --force
read -r hit_again miss_again < <(ccstats)
read -r tu_again tuhit_again < <(units)

# Hits beyond the translation units' reuse are kbuild's compiler probes (cc-option and the
# like, compiles of /dev/null).
rate() {
  python3 -c "h, m, tu, th = $1, $2, $3, $4
print(f'{h} hits / {h + m} calls ({100 * h / max(h + m, 1):.1f}%); translation units: {tu}, from the cache: {th} ({100 * th / max(tu, 1):.1f}%)')"
}
echo "compiler cache, $to after $from: $(rate "$hit_to" "$miss_to" "$tu_to" "$tuhit_to")"
echo "compiler cache, $to again: $(rate "$hit_again" "$miss_again" "$tu_again" "$tuhit_again")"
read -r c_warm _ <"$work/run/warm-to.cpu"
read -r c_cold _ <"$work/run/cold-to.cpu"
read -r c_again _ <"$work/run/again-to.cpu"
python3 -c "print(f'CPU of $to after $from / cold $to: {$c_warm / $c_cold:.2f}; $to again / cold: {$c_again / $c_cold:.2f}')"

# Byte identity: every module of the warm builds against the cold build's.
differ=0 same=0
while IFS= read -r -d '' ko; do
  rel=${ko#"$work/run/cold-to/"}
  for other in warm-to again-to; do
    if cmp -s "$ko" "$work/run/$other/$rel"; then same=$((same + 1)); else
      differ=$((differ + 1)); echo "DIFFERS: $other/$rel"; fi
  done
done < <(find "$work/run/cold-to" -name '*.ko' -not -path '*/.work/*' -print0)
echo "modules of the warm builds byte-identical to the cold build's: $same, differing: $differ"
[ "$differ" = 0 ] && [ "$same" -gt 0 ]
