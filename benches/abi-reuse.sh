#!/usr/bin/env bash
# What a compiler cache could reuse between two ABIs of a kernel series at best: the
# bundled example and real corpus packages built by plain kbuild (`make -C <tree> M=<dir>`)
# for one ABI, then for the next one, both trees shown at the SAME ABI-free paths (a private
# view by bubblewrap: the flavour tree at /mnt/k/usr/src/linux-headers, its -common half at
# /mnt/k/usr/src/linux-headers-common), through ccache in preprocessor mode (keyed by the
# preprocessed text). So no path names the ABI, and what ccache still misses is what differs
# in the text the compiler reads. Per package and target it prints the translation units of
# the second build, how many ccache took from the first (preprocessed text identical), how
# many read only headers byte-identical in both trees (what depend mode, kmx's default,
# could reuse), the fewest changed headers a unit reads, and the changed headers the most
# units read. The same ABI twice (--from X --to X) is the control: every unit from the cache.
#
#   benches/abi-reuse.sh [--from 6.1.0-50] [--to 6.1.0-57] [--targets amd64,arm64]
#                        [--packages a,b]                       (after ./dev setup)
#
# Packages: lines of benches/dkms-corpus/packages.txt whose dkms.conf builds with plain
# `make -C ${kernel_source_dir} M=...` or has no MAKE line (others are skipped, said so),
# from CORPUS_DIR (default target/dkms-corpus: src/<package>/usr/src/<name>-<version>).
# Default: vpoll-dkms, acpi-call-dkms, langford-dkms, tp-smapi-dkms, nat-rtsp-dkms,
# apfs-dkms. Trees: KMX_HOME's (default target/kmx-home), read only. Writes only under
# target/abi-reuse/. Exit status: 0, or 2 on a set-up error.
set -euo pipefail
cd "$(dirname "$0")/.."
KMX_HOME="${KMX_HOME:-$PWD/target/kmx-home}"
CORPUS_DIR="${CORPUS_DIR:-$PWD/target/dkms-corpus}"
from=6.1.0-50 to=6.1.0-57 targets=amd64,arm64
packages=vpoll-dkms,acpi-call-dkms,langford-dkms,tp-smapi-dkms,nat-rtsp-dkms,apfs-dkms
while [ $# -gt 0 ]; do
  case $1 in
    --from) from=$2; shift 2 ;;
    --to) to=$2; shift 2 ;;
    --targets) targets=$2; shift 2 ;;
    --packages) packages=$2; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
die() { echo "abi-reuse: $*" >&2; exit 2; }
for c in ccache bwrap make python3; do command -v $c >/dev/null || die "$c is missing"; done
work=$PWD/target/abi-reuse
rm -rf "$work" && mkdir -p "$work"

# target -> Debian flavour, kbuild ARCH, CROSS_COMPILE (the trees call $(CROSS_COMPILE)gcc-12)
flavour() {
  case $1 in
    amd64) echo "amd64 x86 " ;;
    i386) echo "686-pae x86 i686-linux-gnu-" ;;
    arm64) echo "arm64 arm64 aarch64-linux-gnu-" ;;
    armhf) echo "armmp arm arm-linux-gnueabihf-" ;;
    *) die "unknown target $1 (amd64, i386, arm64, armhf)" ;;
  esac
}
tree_of() { echo "$KMX_HOME/trees/debian-$1"; }
for abi in "$from" "$to"; do [ -d "$(tree_of "$abi")/usr/src/linux-headers-$abi-common" ] ||
  die "no tree of $abi in $KMX_HOME/trees (kmx kernels fetch)"; done

sources=("example $PWD/examples/hello")
IFS=, read -r -a wanted <<<"$packages"
for p in "${wanted[@]}"; do
  d=("$CORPUS_DIR/src/$p"/usr/src/*/)
  [ -f "${d[0]}dkms.conf" ] || die "$p: no $CORPUS_DIR/src/$p/usr/src/*/dkms.conf (run benches/dkms-corpus.sh --packages $p first)"
  if grep -Eq '^MAKE' "${d[0]}dkms.conf" &&
    ! grep -Eq '^MAKE(\[0\])?="make -C \$\{?kernel_source_dir\}? M=[^ "]*( [A-Z0-9_]+=[^ "]*)*"$' "${d[0]}dkms.conf"; then
    echo "$p: skipped (its MAKE line is not a plain M= build)"
    continue
  fi
  vars=$(sed -nE 's/^MAKE(\[0\])?="make -C \$\{?kernel_source_dir\}? M=[^ "]*(( [A-Z0-9_]+=[^ "]*)*)"$/\2/p' "${d[0]}dkms.conf")
  sources+=("$p ${d[0]%/}$vars")
done

# One build of source $2 (make variables after it) for target $3 and ABI $4 at the fixed
# paths, ccache's directory $5; the build directory stays at $work/b for the .cmd files.
build() {
  local src=$1 vars=$2 target=$3 abi=$4 cache=$5 fl arch cross t
  read -r fl arch cross <<<"$(flavour "$target")"
  t=$(tree_of "$abi")
  rm -rf "$work/b" "$work/ccache.log" && cp -a "$src" "$work/b"
  # shellcheck disable=SC2086
  CCACHE_DIR=$cache CCACHE_BASEDIR= CCACHE_HASHDIR=1 CCACHE_NODEPEND=1 CCACHE_NODIRECT=1 \
    CCACHE_LOGFILE=$work/ccache.log \
    bwrap --dev-bind / / --tmpfs /mnt \
    --ro-bind "$t/usr/lib" /mnt/k/usr/lib \
    --ro-bind "$t/usr/src/linux-headers-$abi-$fl" /mnt/k/usr/src/linux-headers \
    --ro-bind "$t/usr/src/linux-headers-$abi-common" /mnt/k/usr/src/linux-headers-common \
    --symlink linux-headers-common "/mnt/k/usr/src/linux-headers-$abi-common" \
    --bind "$work/b" /mnt/m \
    make -C /mnt/k/usr/src/linux-headers M=/mnt/m ARCH="$arch" CROSS_COMPILE="$cross" \
    CC="ccache ${cross}gcc-12" KCFLAGS="-fdebug-prefix-map=/mnt/k/usr/src=/usr/src" $vars modules \
    >"$work/log" 2>&1
}

printf '%-16s %-6s %5s %11s %10s %8s  %s\n' package target units "same text" "same deps" "changed" "changed headers the most units read"
for entry in "${sources[@]}"; do
  read -r name src vars <<<"$entry"
  IFS=, read -r -a tl <<<"$targets"
  for target in "${tl[@]}"; do
    cache=$work/ccache-$name-$target
    rm -rf "$cache" && mkdir -p "$cache"
    if ! build "$src" "$vars" "$target" "$from" "$cache"; then
      printf '%-16s %-6s build for %s failed: %s\n' "$name" "$target" "$from" "$(grep -m1 -E 'error|Error' "$work/log" || tail -1 "$work/log")"
      continue
    fi
    read -r fl _ <<<"$(flavour "$target")"
    # Which units include only headers byte-identical in both trees (kbuild's .cmd files
    # list every header a unit read), and which changed headers the most units include.
    heads=$(python3 - "$work/b" "$(tree_of "$from")" "$(tree_of "$to")" "$from" "$to" "$fl" <<'EOF'
import collections, filecmp, glob, os, sys
b, tf, tt, af, at, fl = sys.argv[1:]
def real(p, t, a):
    for fixed, dir in (("/mnt/k/usr/src/linux-headers-common/", f"linux-headers-{a}-common/"),
                       ("/mnt/k/usr/src/linux-headers/", f"linux-headers-{a}-{fl}/")):
        if p.startswith(fixed):
            return os.path.join(t, "usr/src", dir + p[len(fixed):])
    if not p.startswith("/"):
        return os.path.join(t, "usr/src", f"linux-headers-{a}-{fl}", p)
    return None  # the module's own files and the compiler's: the same in both builds
units = same = 0
fewest = None
changed = collections.Counter()
for cmd in glob.glob(os.path.join(b, "**/.*.o.cmd"), recursive=True):
    text = open(cmd, errors="replace").read()
    if "deps_" not in text:
        continue
    units += 1
    deps = [w.rstrip("\\").strip() for w in text.split("deps_", 1)[1].split(":=", 1)[1].split("\n")]
    deps = [d for d in deps if d and not d.startswith("$(") and not d.startswith("#")]
    diff = set()
    for d in deps:
        if d.endswith(":") or d.startswith(b) or d.startswith("/mnt/m/"):
            continue
        f, t = real(d, tf, af), real(d, tt, at)
        if f is None:
            continue
        if not (os.path.isfile(f) and os.path.isfile(t) and filecmp.cmp(f, t, shallow=False)):
            diff.add(d.replace("/mnt/k/usr/src/linux-headers-common/", "").replace("/mnt/k/usr/src/linux-headers/", ""))
    same += not diff
    fewest = len(diff) if fewest is None else min(fewest, len(diff))
    changed.update(diff)
top = sorted(changed.items(), key=lambda hn: (-hn[1], hn[0]))[:3]
top = ", ".join(f"{h} ({n})" for h, n in top)
print(units, same, fewest or 0, top or "-")
EOF
)
    read -r hunits hsame hfew htop <<<"$heads"
    if ! build "$src" "$vars" "$target" "$to" "$cache"; then
      printf '%-16s %-6s build for %s failed: %s\n' "$name" "$target" "$to" "$(grep -m1 -E 'error|Error' "$work/log" || tail -1 "$work/log")"
      continue
    fi
    # ccache's log: per call (its process id), the source file and whether it was a hit.
    read -r units reused < <(awk '
      match($0, /^\[[^ ]+ +[0-9]+/) { pid = substr($0, RSTART, RLENGTH); sub(/.* /, "", pid) }
      / Source file: \/mnt\/m\// { unit[pid] = 1 }
      / Result: (direct_|preprocessed_)?cache_hit$/ { hit[pid] = 1 }
      END { for (p in unit) { n++; h += (p in hit) } print n + 0, h + 0 }' "$work/ccache.log")
    printf '%-16s %-6s %5d %11s %10s %8s  %s\n' "$name" "$target" "$units" "$reused" "$hsame/$hunits" "$hfew+" "$htop"
  done
done
echo "units: the compiles of the module's files in the $to build (the .mod.c included); same text:"
echo "those ccache took from the $from build (preprocessed text identical); same deps: units of which"
echo "every header is byte-identical in both trees; changed: the fewest changed headers a unit reads"
