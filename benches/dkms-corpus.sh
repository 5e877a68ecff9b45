#!/usr/bin/env bash
# Real-package corpus: real Debian *-dkms packages (Debian 12's, or Debian 13's with --suite
# trixie; main, contrib and non-free) built for i386, amd64, arm64 and armhf by Debian's real DKMS (made to cross-compile, one private mount namespace per cell) and by
# ONE `kmx build` over all of them; compares every cell and both wall times.
#
#   benches/dkms-corpus.sh [--jobs N] [--packages a,b] [--all] [--series S] [--targets a,b]
#                          [--suite bookworm|trixie]                (after ./dev setup; root)
#   KMX=/path/to/kmx KMX_HOME=/path/to/home benches/dkms-corpus.sh
#
# --jobs N      DKMS cells run N at a time (xargs -P N, each DKMS make with its own -jN as
#               DKMS does); kmx runs with --jobs N. Default 2.
# --packages    a comma-separated subset of benches/dkms-corpus/packages.txt (slow ones too)
# --all         also the packages tagged "slow" in the list
# --series S    the kernel series built for: each target's tree whose release is S.x or S-x
#               (default 6.1: Debian 12's; 6.12: bookworm-backports'); results go to
#               target/dkms-corpus/run-S/, so the cells of each series are kept apart
# --targets     a comma-separated subset of i386, amd64, arm64, armhf, rpi
#               (default i386,amd64,arm64,armhf)
# --suite S     the Debian release whose packages are built: bookworm (default) or trixie.
#               Packages come from S's main, contrib and non-free through a private apt
#               state (target/dkms-corpus/apt/S/); a list line S lacks is left out. With a
#               suite other than bookworm, a line whose version is bookworm's is left out too
#               (it would build the same cells), unless named with --packages. Results go to
#               run-<series>-S/ (bookworm: run-<series>/), sources to src-S/, .debs to cache-S/.
# --steps HZ    also say where each tool's CPU goes, step by step (planning, sandbox set-up,
#               kbuild, compile, modpost, BTF, strip, signing, DKMS's make clean, each tool's
#               own process): both runs are sampled system-wide by `perf record -a -F HZ`
#               (perf, from linux-perf) and steps.py charges every sample of the run's process
#               tree to a step by the process's name and its ancestors'; the table is in
#               run-.../steps.txt. Sampling costs CPU too: take the whole-run figures from a
#               run without --steps
# --reuse-dkms  keep the DKMS cells of the previous run of the same series and suite (DKMS
#               runs only the cells it lacks; its times are then those of the earlier run):
#               for re-running kmx while fixing a difference
#
# Needs: root (mount namespaces), Debian's dkms (apt-get install --no-install-recommends
# dkms), the cross compilers and kernel trees of `./dev setup`, apt (`apt-get update` and
# `apt-get download` in the private apt state, signed by debian-archive-keyring),
# python3, modinfo, unshare. Writes only under target/dkms-corpus/ (apt/: the apt states;
# cache/: the .debs; src/: the extracted packages; run-<series>/: results, logs and
# table.txt); checks that /usr/src,
# /var/lib/dkms and /lib/modules are the same before and after.
# Exit status: 0 when every cell agrees, 1 when one differs, 2 on a usage or set-up error.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD/benches/dkms-corpus
export KMX_HOME="${KMX_HOME:-$PWD/target/kmx-home}"
KMX="${KMX:-$PWD/target/release/kmx}"
jobs=2 subset="" all="" series=6.1 targets_wanted=i386,amd64,arm64,armhf suite=bookworm reuse="" steps_hz=""
while [ $# -gt 0 ]; do
  case $1 in
    --jobs) jobs=$2; shift 2 ;;
    --jobs=*) jobs=${1#*=}; shift ;;
    --packages) subset=$2; shift 2 ;;
    --packages=*) subset=${1#*=}; shift ;;
    --all) all=1; shift ;;
    --series) series=$2; shift 2 ;;
    --series=*) series=${1#*=}; shift ;;
    --targets) targets_wanted=$2; shift 2 ;;
    --targets=*) targets_wanted=${1#*=}; shift ;;
    --suite) suite=$2; shift 2 ;;
    --suite=*) suite=${1#*=}; shift ;;
    --reuse-dkms) reuse=1; shift ;;
    --steps) steps_hz=$2; shift 2 ;;
    --steps=*) steps_hz=${1#*=}; shift ;;
    -h|--help) sed -n '2,43p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
die() { echo "dkms-corpus: $*" >&2; exit 2; }
case $suite in bookworm|trixie) ;; *) die "--suite $suite: bookworm or trixie" ;; esac
[ "$(id -u)" = 0 ] || die "run as root: every DKMS cell needs a private mount namespace"
command -v dkms >/dev/null || die "Debian's dkms is missing: apt-get install --no-install-recommends dkms"
# pahole: kbuild runs it for trees that make BTF (Debian's 6.12 amd64 and arm64), for DKMS too.
[ -x /usr/bin/time ] || die "GNU time is missing: apt-get install time"
for c in unshare python3 modinfo apt-get dpkg-deb openssl xargs pahole; do
  command -v $c >/dev/null || die "$c is missing"
done
[ -z "$steps_hz" ] || command -v perf >/dev/null || die "--steps needs perf: apt-get install linux-perf"
[ -x "$KMX" ] || cargo build --release --quiet
[ -x "$KMX" ] || die "no kmx at $KMX"

root=$PWD/target/dkms-corpus
if [ "$suite" = bookworm ]; then
  cache=$root/cache src=$root/src run=$root/run-$series
else
  cache=$root/cache-$suite src=$root/src-$suite run=$root/run-$series-$suite
fi
mkdir -p "$cache" "$src"
if [ -n "$reuse" ] && [ -d "$run/dkms" ]; then
  find "$run" -mindepth 1 -maxdepth 1 ! -name dkms ! -name dkms-times -exec rm -rf {} +
else
  rm -rf "$run" && mkdir -p "$run"
fi

# A private apt state per suite (main, contrib, non-free), refreshed once a day: the host's
# apt sources are not read or changed. Prints the APT_CONFIG file.
apt_state() {
  local s=$1 d=$root/apt/$1 comps="main contrib non-free"
  [ "$s" = bookworm ] || comps="$comps non-free-firmware"
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/etc/apt.conf.d" "$d/etc/preferences.d" \
    "$d/etc/sources.list.d"
  [ -f "$d/status" ] || : >"$d/status"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $s $comps" \
    >"$d/etc/sources.list"
  cat >"$d/apt.conf" <<EOF
Dir::State "$d"; Dir::State::Lists "$d/lists"; Dir::State::status "$d/status";
Dir::Cache "$d/cache"; Dir::Etc "$d/etc"; Dir::Etc::SourceList "$d/etc/sources.list";
Dir::Etc::SourceParts "$d/etc/sources.list.d"; Dir::Etc::Parts "$d/etc/apt.conf.d";
Dir::Etc::PreferencesParts "$d/etc/preferences.d";
APT::Architecture "amd64"; APT::Architectures { "amd64"; }; Acquire::Languages "none";
Acquire::GzipIndexes "true"; APT::Sandbox::User "root"; Debug::NoLocking "true";
EOF
  if [ -z "$(find "$d/lists" -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null)" ]; then
    APT_CONFIG=$d/apt.conf apt-get update -qq >&2 || die "apt-get update of $s failed"
  fi
  echo "$d/apt.conf"
}
# "package version" of every *-dkms package of a suite.
dkms_versions() {
  APT_CONFIG=$1 apt-cache dumpavail |
    awk '/^Package:/ { p = $2 } /^Version:/ { v = $2 } /^$/ { if (p ~ /-dkms$/) print p, v; p = "" }' | sort -u
}
apt_conf=$(apt_state "$suite")
dkms_versions "$apt_conf" >"$run/available"
if [ "$suite" != bookworm ]; then
  dkms_versions "$(apt_state bookworm)" >"$run/bookworm-versions"
else
  cp "$run/available" "$run/bookworm-versions"
fi

# The package list: every non-slow line the suite has (other than bookworm: whose version
# differs from bookworm's), or the named subset.
mapfile -t packages < <(awk -v sub_="$subset" -v all="$all" -v suite="$suite" '
  FILENAME == ARGV[1] { have[$1] = $2; next }
  FILENAME == ARGV[2] { old[$1] = $2; next }
  /^[[:space:]]*(#|$)/ { next }
  !($1 in have) { if (sub_ == "") print "left out (not in " suite "): " $1 > "/dev/stderr"; next }
  { slow = ($3 == "slow:") }
  sub_ == "" && suite != "bookworm" && old[$1] == have[$1] {
    print "left out (the same version as bookworm): " $1 > "/dev/stderr"; next }
  sub_ == "" && (all || !slow) { print $1 }
  sub_ != "" { n = split(sub_, want, ","); for (i = 1; i <= n; i++) if (want[i] == $1) print $1 }
' "$run/available" "$run/bookworm-versions" "$here/packages.txt")
[ ${#packages[@]} -gt 0 ] || die "no package selected (see $here/packages.txt)"
if [ -n "$subset" ]; then
  for p in ${subset//,/ }; do
    grep -q "^$p " "$run/available" || die "$p is not in $suite (main, contrib, non-free)"
    printf '%s\n' "${packages[@]}" | grep -qx -- "$p" || die "$p is not in $here/packages.txt"
  done
fi
# NEEDS of the selected packages are built too (their sources must exist), in the suite's
# version even where it is bookworm's.
awk '!/^[[:space:]]*(#|$)/ && $2 != "-" { print $1, $2 }' "$here/packages.txt" | tr , ' ' >"$run/needs"
for p in "${packages[@]}"; do
  for d in $(awk -v p="$p" '$1 == p { $1 = ""; print }' "$run/needs"); do
    printf '%s\n' "${packages[@]}" | grep -qx -- "$d" || packages+=("$d")
  done
done
printf '%s\n' "${packages[@]}" >"$run/packages"

# Host state that must not change.
host_state() { for d in /usr/src /var/lib/dkms /lib/modules; do echo "== $d"; ls -la "$d" 2>&1 | grep -v ' \.\.\?$' || true; done; }
host_state >"$run/host-before.txt"

# 1. Download (cached) and extract (fresh every run).
echo "== ${#packages[@]} packages: ${packages[*]}"
deb_of() { # the cached .deb of the suite's version of package $1
  local v
  v=$(awk -v p="$1" '$1 == p { print $2 }' "$run/available")
  compgen -G "$cache/${1}_${v//:/%3a}_*.deb" | head -n 1
}
missing=()
for p in "${packages[@]}"; do
  [ -n "$(deb_of "$p")" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "downloading ${missing[*]} ($suite)"
  (cd "$cache" && APT_CONFIG=$apt_conf apt-get download "${missing[@]}" >/dev/null) ||
    die "apt-get download of ${missing[*]} from $suite failed"
fi
sources=()
for p in "${packages[@]}"; do
  deb=$(deb_of "$p")
  rm -rf "${src:?}/$p" && mkdir -p "$src/$p"
  dpkg-deb -x "$deb" "$src/$p"
  d=("$src/$p"/usr/src/*/)
  [ -f "${d[0]}dkms.conf" ] || die "$p: no usr/src/*/dkms.conf in $deb"
  sources+=("${d[0]%/}")
done

# 2. The cells' trees, from kmx (the same trees for both builders): per target, its tree of
# the series. DKMS's results and the table are keyed by target within run-<series>/, and the
# series names the release, so every cell is keyed by target and release.
"$KMX" kernels list --json >"$run/trees.json"
python3 - "$run/trees.json" "$series" "$targets_wanted" >"$run/cells" <<'PY'
import json, sys
cross = {"i386": ("x86", "i686-linux-gnu-", "i686"),
         "amd64": ("x86", "x86_64-linux-gnu-", "x86_64"),
         "arm64": ("arm64", "aarch64-linux-gnu-", "aarch64"),
         "armhf": ("arm", "arm-linux-gnueabihf-", "armv7l"),
         "rpi": ("arm", "arm-linux-gnueabi-", "armv6l")}
trees = json.load(open(sys.argv[1]))["trees"]
series, wanted = sys.argv[2], sys.argv[3].split(",")
seen = set()
for t in sorted(trees, key=lambda t: t.get("release") or ""):
    r = t.get("release") or ""
    in_series = r.startswith(series + ".") or r.startswith(series + "-")
    if t["target"] in cross and t["target"] in wanted and in_series and not t.get("error") \
            and t["target"] not in seen:
        seen.add(t["target"])
        print(t["target"], r, t["kdir"], *cross[t["target"]])
PY
[ "$(wc -l <"$run/cells")" -ge 1 ] || die "no kernel tree: run ./dev setup (kmx kernels fetch)"
targets=$(awk '{print $1}' "$run/cells" | paste -sd,)
kernels=$(awk '{print "--kernel " $2}' "$run/cells" | paste -sd' ')

# DKMS's helpers: a strip that strips for the target, one signing key for every cell.
mkdir -p "$run/tools" "$root/mok"
printf '#!/bin/sh\nexec "${CROSS_COMPILE}strip" "$@"\n' >"$run/tools/strip"
chmod +x "$run/tools/strip"
[ -f "$root/mok/mok.key" ] || openssl req -new -x509 -nodes -days 36500 \
  -subj "/CN=kmx corpus DKMS signing key" -newkey rsa:2048 -keyout "$root/mok/mok.key" \
  -outform DER -out "$root/mok/mok.pub" >/dev/null 2>&1

now() { date +%s.%N; }

# 3. Real DKMS: every package x target, N cells at a time.
export CORPUS_SRC=$src CORPUS_RUN=$run CORPUS_CELLS=$run/cells CORPUS_NEEDS=$run/needs \
  CORPUS_TOOLS=$run/tools CORPUS_MOK=$root/mok
ncells=$(( ${#packages[@]} * $(wc -l <"$run/cells") ))
# CPU seconds of every process a command starts, wherever it ends: the command runs in a
# cgroup of its own (cgroup v1 cpuacct, or v2 cpu.stat) and the cgroup's usage is read
# after; GNU time sees only what is reaped into the command (kmx's steps run under
# bubblewrap, whose monitor exits without reaping its PID namespace's init). Falls back to
# GNU time where no cgroup can be made, and says so. Usage: cpu_run OUTFILE COMMAND...
cpu_run() {
  local out=$1 cg rc=0
  shift
  for base in /sys/fs/cgroup/cpuacct /sys/fs/cgroup/unified /sys/fs/cgroup; do
    cg=$base/kmx-corpus.$$
    if mkdir "$cg" 2>/dev/null; then
      if [ -f "$cg/cpuacct.usage" ] || [ -f "$cg/cpu.stat" ]; then break; fi
      rmdir "$cg"
    fi
    cg=""
  done
  if [ -z "$cg" ]; then
    /usr/bin/time -f '%U %S' -o "$out.time" "$@" || rc=$?
    awk 'END { printf "%.1f time\n", $1 + $2 }' "$out.time" >"$out"
    return $rc
  fi
  local perf=""
  if [ -n "$steps_hz" ]; then
    perf record -q -a -e cpu-clock -F "$steps_hz" -o "$out.perf" 2>"$out.perf.log" &
    perf=$!
    sleep 1 # perf has opened its events
  fi
  bash -c 'echo $$ > "$2"; echo $$ > "$1/cgroup.procs" 2>/dev/null || echo $$ > "$1/tasks"; shift 2; exec "$@"' \
    _ "$cg" "$out.pid" "$@" || rc=$?
  if [ -n "$perf" ]; then kill -INT "$perf" && wait "$perf" || true; fi
  if [ -f "$cg/cpuacct.usage" ]; then
    awk '{ printf "%.1f cgroup\n", $1 / 1e9 }' "$cg/cpuacct.usage" >"$out"
  else
    awk '$1 == "usage_usec" { printf "%.1f cgroup\n", $2 / 1e6 }' "$cg/cpu.stat" >"$out"
  fi
  rmdir "$cg" 2>/dev/null || true
  return $rc
}

echo "== DKMS: $ncells cells, $jobs at a time"
t0=$(now)
for p in "${packages[@]}"; do
  awk -v p="$p" '{ print p, $1 }' "$run/cells"
done | while read -r p t; do
  [ -n "$reuse" ] && [ -s "$run/dkms/$p/$t/status" ] || echo "$p $t"
done >"$run/dkms-cells"
if [ -n "$reuse" ] && [ ! -s "$run/dkms-cells" ] && [ -s "$run/dkms-times" ]; then
  read -r t_dkms cpu_dkms cpu_how <"$run/dkms-times"
  echo "(every DKMS cell kept from the previous run, and its times)"
else
  cpu_run "$run/dkms-cpu" xargs -P "$jobs" -L 1 "$here/dkms-cell.sh" <"$run/dkms-cells"
  t_dkms=$(python3 -c "print(f'{$(now) - $t0:.1f}')")
  read -r cpu_dkms cpu_how <"$run/dkms-cpu"
  echo "$t_dkms $cpu_dkms $cpu_how" >"$run/dkms-times"
fi
echo "DKMS wall time: ${t_dkms}s, CPU ${cpu_dkms}s"

# 4. kmx: one run over every source (no cache, every cell rebuilt, a private state store).
echo "== kmx: one build of ${#sources[@]} sources x $targets, --jobs $jobs"
t0=$(now)
set +e
# shellcheck disable=SC2086 # --kernel R words
cpu_run "$run/kmx-cpu" \
  "$KMX" build "${sources[@]}" --target "$targets" $kernels --out "$run/kmx" --json --jobs "$jobs" \
  --force --no-cache --state-dir "$run/kmx-state" >"$run/kmx-report.json" 2>"$run/kmx-build.log"
kmx_rc=$?
set -e
t_kmx=$(python3 -c "print(f'{$(now) - $t0:.1f}')")
read -r cpu_kmx cpu_how <"$run/kmx-cpu"
echo "kmx wall time: ${t_kmx}s, CPU ${cpu_kmx}s (exit $kmx_rc)"
rm -rf "$run/kmx-state"

host_state >"$run/host-after.txt"
host_ok=1
if ! diff -u "$run/host-before.txt" "$run/host-after.txt"; then
  host_ok=0
  echo "dkms-corpus: the host changed under /usr/src, /var/lib/dkms or /lib/modules" >&2
fi

# 5. The table.
set +e
python3 "$here/table.py" --run "$run" --src "$src" --dkms-secs "$t_dkms" --kmx-secs "$t_kmx" \
  --dkms-cpu "$cpu_dkms" --kmx-cpu "$cpu_kmx" --cpu-how "$cpu_how" --jobs "$jobs" | tee "$run/table.txt"
rc=${PIPESTATUS[0]}
if [ -n "$steps_hz" ]; then
  for tool in dkms kmx; do
    [ -s "$run/$tool-cpu.perf" ] || continue
    python3 "$here/steps.py" --perf "$run/$tool-cpu.perf" --root "$(cat "$run/$tool-cpu.pid")" \
      --hz "$steps_hz" --cells "$ncells" --label "$tool" || rc=1
  done | tee "$run/steps.txt"
fi
[ $host_ok = 1 ] || rc=1
exit $rc
