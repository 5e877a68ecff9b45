#!/usr/bin/env bash
# One DKMS cell of the corpus: build package PKG for target TARGET with Debian's real `dkms`,
# cross-compiling, in a private mount namespace so nothing on the host changes.
#
#   dkms-cell.sh PKG TARGET        (called by ../dkms-corpus.sh through xargs; env below)
#
# Environment (set by dkms-corpus.sh):
#   CORPUS_SRC      extracted packages: $CORPUS_SRC/<pkg>/usr/src/<name>-<version>/dkms.conf
#   CORPUS_RUN      results: writes $CORPUS_RUN/dkms/<pkg>/<target>/{status,secs,modules/*.ko,make.log,dkms.log}
#   CORPUS_CELLS    lines "target release kdir ARCH CROSS_COMPILE dkms-arch"
#   CORPUS_NEEDS    lines "pkg other-pkg..." (Debian Depends on other -dkms packages: their
#                   sources are put under the cell's /usr/src too, as on a real machine)
#   CORPUS_TOOLS    a directory holding `strip` (runs ${CROSS_COMPILE}strip): first on PATH
#   CORPUS_MOK      a directory holding mok.key and mok.pub (DKMS signs with them; one key
#                   made once, so no cell pays for generating its own)
#
# Inside the namespace: /usr/src and /var/lib/dkms are fresh tmpfs holding only this cell's
# source (and the sources it depends on), /lib/modules is a tmpfs where
# /lib/modules/<release>/build is the target's kernel tree. DKMS is run as
#   dkms add/build -m M -v V -k RELEASE -a DKMS_ARCH --kernelsourcedir KDIR
#                  --dkmstree /var/lib/dkms --sourcetree /usr/src
# with ARCH and CROSS_COMPILE exported (make inherits them).
#
# status file: "built", "skipped" (dkms exit 77, BUILD_EXCLUSIVE), "failed <exit code>".
set -uo pipefail
pkg=$1 target=$2
out="$CORPUS_RUN/dkms/$pkg/$target"
rm -rf "$out" && mkdir -p "$out/modules"
start=$(date +%s.%N)

read -r _ release kdir karch cross darch < <(awk -v t="$target" '$1 == t' "$CORPUS_CELLS")
[ -n "${kdir:-}" ] || { echo "failed no-tree" >"$out/status"; exit 0; }

srcdir() { # the one usr/src/<name>-<version> of an extracted package
  local d=("$CORPUS_SRC/$1"/usr/src/*/)
  echo "${d[0]%/}"
}
src=$(srcdir "$pkg")
deps=()
read -r -a deps < <(awk -v p="$pkg" '$1 == p { $1 = ""; print }' "$CORPUS_NEEDS" 2>/dev/null) || true

# PACKAGE_NAME / PACKAGE_VERSION as DKMS reads them (dkms.conf is bash; the variables it
# may use are set the way DKMS sets them).
read -r name version < <(cd "$src" && kernelver=$release arch=$darch kernel_source_dir=$kdir \
  dkms_tree=/var/lib/dkms source_tree=/usr/src bash -c '. ./dkms.conf >/dev/null 2>&1; echo "$PACKAGE_NAME $PACKAGE_VERSION"')
# The version is the directory's, as dh_dkms's postinst calls `dkms add -m NAME -v VERSION`
# for /usr/src/NAME-VERSION (a PACKAGE_VERSION placeholder such as #MODULES_VERSION#, which
# dh_dkms leaves, is never used).
dir=$(basename "$src")
case $dir in "$name"-?*) version=${dir#"$name"-} ;; esac

inner=$(cat <<'INNER'
set -u
out=$1 release=$2 kdir=$3 karch=$4 cross=$5 darch=$6 src=$7 name=$8 version=$9
shift 9
# A scratch tmpfs for overlay upper layers (the kernel refuses an upper dir on overlayfs).
scratch=$(mktemp -d) && mount -t tmpfs corpus-scratch "$scratch" || exit 1
private() { # $1: make this directory an empty private tmpfs, never touching the host
  local dir parent
  dir=$(realpath -m "$1")
  if [ -d "$dir" ]; then
    mount -t tmpfs -o mode=755 corpus "$dir" || exit 1
    return
  fi
  # Missing on the host: overlay its nearest existing parent, create it in the upper layer.
  parent=$dir
  while [ ! -d "$parent" ]; do parent=$(dirname "$parent"); done
  local n=$scratch/o$RANDOM
  mkdir -p "$n/u" "$n/w"
  mount -t overlay corpus -o "lowerdir=$parent,upperdir=$n/u,workdir=$n/w" "$parent" || exit 1
  mkdir -p "$dir" && mount -t tmpfs -o mode=755 corpus "$dir" || exit 1
}
private /usr/src
private /var/lib/dkms
private /lib/modules
mkdir -p "/lib/modules/$release" && ln -s "$kdir" "/lib/modules/$release/build"
cp -a "$src" "/usr/src/$name-$version"
for d in "$@"; do cp -a "$d" /usr/src/; done
cp "$CORPUS_MOK/mok.key" "$CORPUS_MOK/mok.pub" /var/lib/dkms/
export ARCH=$karch CROSS_COMPILE=$cross PATH="$CORPUS_TOOLS:$PATH"
common=(-m "$name" -v "$version" -k "$release" -a "$darch" --kernelsourcedir "$kdir"
        --dkmstree /var/lib/dkms --sourcetree /usr/src)
dkms add "${common[@]}" >>"$out/dkms.log" 2>&1
dkms build "${common[@]}" >>"$out/dkms.log" 2>&1
rc=$?
base="/var/lib/dkms/$name/$version/$release/$darch"
case $rc in
  0) echo built >"$out/status" ;;
  77) echo skipped >"$out/status" ;;
  *) echo "failed $rc" >"$out/status" ;;
esac
cp "$base"/module/* "$out/modules/" 2>/dev/null
cp "$base/log/make.log" "$out/make.log" 2>/dev/null ||
  cp "/var/lib/dkms/$name/$version/build/make.log" "$out/make.log" 2>/dev/null
exit 0
INNER
)
dep_dirs=()
for d in "${deps[@]}"; do dep_dirs+=("$(srcdir "$d")"); done
# The cell's values travel as arguments, not in the environment: the package's make
# inherits the environment, and Makefiles read names like `src` and `kdir` from it.
unshare --mount --propagation private bash -c "$inner" inner \
  "$out" "$release" "$kdir" "$karch" "$cross" "$darch" "$src" "$name" "$version" "${dep_dirs[@]}"
[ -s "$out/status" ] || echo "failed namespace" >"$out/status"
python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')" >"$out/secs"
