#!/usr/bin/env bash
# Paired whole-command CPU figures of DKMS and kmx over a few corpus cells: DKMS's cells
# (dkms-cell.sh, 2 at a time, as dkms-corpus.sh runs them) and one `kmx build` of the same
# cells, alternated A B A B by a benchmark harness that reads each run's rusage; both run
# under reap-all.py, so the processes bubblewrap leaves unreaped are counted.
#
#   benches/dkms-corpus/paired.sh RUN_DIR PKG... -- HARNESS [ARGS...]
#
# RUN_DIR: a run directory of dkms-corpus.sh (its cells, needs and tools; the packages must
# be extracted in its src-* directory). PKG: package names. HARNESS: the timing command,
# given `-- A` and `--vs 'B'` (a harness that pairs two commands). Both builds are cold:
# every DKMS cell starts from nothing, and kmx's compiler cache (KMX_HOME/cache/ccache) is
# emptied before each kmx run, so give kmx a home of its own (`cp -al HOME COPY`, then
# KMX_HOME=COPY). Writes only under RUN_DIR/paired/ and that cache.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
run=$(cd "$1" && pwd)
shift
pkgs=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do pkgs+=("$1"); shift; done
[ "${1:-}" = -- ] || { echo "usage: paired.sh RUN_DIR PKG... -- HARNESS [ARGS...]" >&2; exit 2; }
shift
root=$(dirname "$run")
case $(basename "$run") in *-trixie) src=$root/src-trixie ;; *) src=$root/src ;; esac
KMX="${KMX:-$here/../../target/release/kmx}"
export KMX_HOME="${KMX_HOME:-$here/../../target/kmx-home}"
out=$run/paired
rm -rf "$out" && mkdir -p "$out"
sources=() cells=()
for p in "${pkgs[@]}"; do
  d=("$src/$p"/usr/src/*/)
  sources+=("${d[0]%/}")
  while read -r t _; do cells+=("$p $t"); done <"$run/cells"
done
printf '%s\n' "${cells[@]}" >"$out/dkms-cells"
targets=$(awk '{print $1}' "$run/cells" | paste -sd,)
kernels=$(awk '{print "--kernel " $2}' "$run/cells" | paste -sd' ')
cat >"$out/dkms.sh" <<SH
#!/bin/sh
export CORPUS_SRC=$src CORPUS_RUN=$out CORPUS_CELLS=$run/cells CORPUS_NEEDS=$run/needs \
  CORPUS_TOOLS=$run/tools CORPUS_MOK=$root/mok
exec $here/../reap-all.py xargs -P 2 -L 1 $here/dkms-cell.sh <$out/dkms-cells
SH
cat >"$out/kmx.sh" <<SH
#!/bin/sh
rm -rf $out/kmx-state "$KMX_HOME/cache/ccache"
KMX_HOME=$KMX_HOME exec $here/../reap-all.py $KMX build ${sources[*]} --target $targets $kernels --out $out/kmx \
  --force --no-cache --jobs 2 --state-dir $out/kmx-state
SH
chmod +x "$out/dkms.sh" "$out/kmx.sh"
"$@" --vs "$out/dkms.sh" -- "$out/kmx.sh"
