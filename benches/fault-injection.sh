#!/usr/bin/env bash
# Fault injection: kill kmx with SIGKILL at random points of `add`, `build`, `install`,
# `uninstall`, `remove` and `load-tarball`, and after every kill check, with checkers that do
# not trust kmx's own view:
#
#   - no process of the run is left (every kmx of the run gets a unique HOME, which every
#     child inherits; /proc/*/environ is searched for it);
#   - `kmx status --check` (records parse, files there with their SHA-256, displaced modules
#     somewhere) finds nothing but what the killed kmx left for the next one to remove;
#   - a plain scan of the image root finds only what a completed or a not-started operation
#     leaves, plus the killed kmx's `.kmx-tmp-<pid>-*` files;
#   - the re-run of the same command completes (exit 0), after which `status --check` is
#     clean, no kmx temporary file is left anywhere (store, root, build output, /tmp), the
#     image root holds exactly what the operation leaves, and no install is `interrupted`.
#
# Then SIGINT, SIGTERM and SIGHUP at five phases of `kmx install` (planning: a dkms.conf
# that sleeps; make: a make that sleeps; strip/check: paused after make; install: paused
# while a module is written into the root; depmod: paused before depmod) must each give
# exit 130 and leave no process, and the store consistent.
#
# Usage: benches/fault-injection.sh [--iterations N] [--seed S] [--kmx PATH] [--no-signals]
#                                   [--keep]
# Needs fetched kernel trees: KMX_TEST_HOME (or KMX_HOME) naming a kmx home whose
# trees/registry.json lists an arm64 tree (`./dev test` fetches them). Exits 0 when every
# iteration was consistent and left nothing, 1 otherwise.
set -uo pipefail

ITER=60
SEED=
KMX=
SIGNALS=1
KEEP=0
while [ $# -gt 0 ]; do
  case $1 in
    --iterations) ITER=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --kmx) KMX=$2; shift 2 ;;
    --no-signals) SIGNALS=0; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fault-injection: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

repo=$(cd "$(dirname "$0")/.." && pwd)
KMX=${KMX:-$repo/target/release/kmx}
TREES=${KMX_TEST_HOME:-${KMX_HOME:-}}
if [ ! -x "$KMX" ]; then
  echo "fault-injection: no kmx at $KMX (cargo build --release, or pass --kmx)" >&2; exit 2
fi
if [ ! -f "$TREES/trees/registry.json" ]; then
  echo "fault-injection: set KMX_TEST_HOME to a kmx home with fetched trees (./dev test fetches them)" >&2
  exit 2
fi
SEED=${SEED:-$(( $(date +%s) % 32768 ))}
RANDOM=$SEED

work=$(mktemp -d /tmp/kmx-faults.XXXXXX)
mark=$work/run-home          # the HOME of every kmx of this run, inherited by its children
mkdir -p "$mark" "$work/home/trees"
# The fetched trees, shared: the registry's paths are relative to trees/, so link each sysroot.
cp "$TREES/trees/registry.json" "$work/home/trees/"
for d in "$TREES"/trees/*/; do ln -s "$d" "$work/home/trees/$(basename "$d")"; done
export KMX_HOME=$work/home XDG_CONFIG_HOME=$work/xdg
unset KMX_CONFIG_DIR KMX_STATE_DIR
state=$KMX_HOME/state
root=$work/root
out=$work/out
pids=()                      # every kmx started, to recognise its /tmp directory

cleanup() {
  local left
  left=$(procs)
  [ -n "$left" ] && for p in $left; do kill -KILL "$p" 2>/dev/null; done
  if [ "$KEEP" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

kmx() { HOME=$mark "$KMX" "$@"; }

# The pids of every process of the run (kmx and anything it started).
procs() {
  grep -lszxF "HOME=$mark" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 | grep -vx "$$" || true
}

# Wait up to 5 s for the run's processes to be gone; print those that are not.
left_processes() {
  local i p
  for i in $(seq 50); do
    [ -z "$(procs)" ] && return 0
    sleep 0.1
  done
  for p in $(procs); do
    echo "    $p: $({ tr '\0' ' ' < "/proc/$p/cmdline"; } 2>/dev/null)"
  done
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

release=$(kmx kernels list --json | jq -r '[.trees[] | select(.target == "arm64")][0].release')
if [ -z "$release" ] || [ "$release" = null ]; then
  echo "fault-injection: no arm64 tree in $TREES" >&2; exit 2
fi
mods=lib/modules/$release

# A module source, and a root whose kernel has its own module of that name (moved aside by
# install, restored by uninstall).
mkdir -p "$work/hello" "$root/$mods/kernel"
cp "$repo/examples/hello/"{hello.c,Kbuild,dkms.conf} "$work/hello/"
printf 'in-tree module\n' > "$root/$mods/kernel/hello.ko"
install_args=(install hello -t arm64 -k "$release" --root "$root")
uninstall_args=(uninstall hello -t arm64 -k "$release" --root "$root")

# What the root holds (module files, not depmod's output), completed or not started.
root_files() { (cd "$root" && find . \( -type f -o -type l \) ! -name 'modules.*' | sort); }

echo "fault-injection: seed $SEED, $ITER iterations, kmx $KMX, kernel $release, work $work"
started=$(now_ms)
setup_ok=1
kmx add "$work/hello" >/dev/null 2>&1 || setup_ok=0
root_files > "$work/expect-clean"
kmx "${install_args[@]}" >/dev/null 2>&1 || setup_ok=0
root_files > "$work/expect-installed"
kmx tarball hello -t arm64 -o "$work/hello.tar.gz" >/dev/null 2>&1 || setup_ok=0
kmx "${uninstall_args[@]}" >/dev/null 2>&1 || setup_ok=0
kmx remove hello/1.0 >/dev/null 2>&1 || setup_ok=0
if [ "$setup_ok" != 1 ] || ! cmp -s <(root_files) "$work/expect-clean"; then
  echo "fault-injection: setup failed (add, install, tarball, uninstall, remove)" >&2
  kmx "${install_args[@]}"
  exit 1
fi

# The model: what the store holds.
registered=0 built=0 installed=0
declare -A dur=([add]=400 [build]=4000 [install]=2500 [uninstall]=400 [remove]=400 [load-tarball]=400)
declare -A kills=() completed=()
inconsistent=0
leftovers=0
pending=0                    # what killed kmx left for the next run to remove
problem() { echo "  INCONSISTENT [$1]: $2"; inconsistent=$((inconsistent + 1)); }
leftover() { echo "  LEFTOVER [$1]: $2"; leftovers=$((leftovers + 1)); }

args_of() {
  case $1 in
    add) echo add "$work/hello" ;;
    build) echo build "$work/hello" -t arm64 --no-cache --out "$out" ;;
    install) echo "${install_args[@]}" ;;
    uninstall) echo "${uninstall_args[@]}" ;;
    remove) echo remove hello/1.0 ;;
    load-tarball) echo load-tarball "$work/hello.tar.gz" ;;
  esac
}

# The kmx temporary files (of any kmx, or of an older one) under the store, the root and the
# build output (its `.work` scratch aside), and this run's in /tmp.
temporaries() {
  find "$state" "$root" "$out" \( -path "$state/sources/*/*/src" -o -path "$out/.work" \) -prune -o \
    \( -name '.kmx-tmp-*' -o -name '.tmp??????' -o -name '.stage-*' -o -name '.incoming-*' \
       -o -name '.src-new-*' -o -name '.src-old-*' -o -name '.removing-*' -o -name '.*.old-*' \) \
    -print 2>/dev/null
  local p
  for p in "${pids[@]}"; do
    ls -d /tmp/.kmx-tmp-"$p"-* 2>/dev/null
  done
}

for i in $(seq 1 "$ITER"); do
  # An operation the model allows, at random.
  ops=(add build load-tarball)
  if [ $registered = 1 ] || [ $built = 1 ]; then ops+=(install install remove); fi
  [ $installed = 1 ] && ops+=(uninstall uninstall)
  op=${ops[$((RANDOM % ${#ops[@]}))]}
  read -ra args <<< "$(args_of "$op")"
  delay=$(( RANDOM % (dur[$op] + 1) ))
  log=$work/log-$i
  HOME=$mark "$KMX" "${args[@]}" > "$log" 2>&1 &
  pid=$!
  pids+=("$pid")
  sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
  killed=0
  if kill -KILL "$pid" 2>/dev/null; then killed=1; fi
  wait "$pid" 2>/dev/null
  rc=$?
  if [ $killed = 1 ] && [ $rc != 137 ]; then killed=0; fi   # it had just finished
  if [ $killed = 1 ]; then
    kills[$op]=$(( ${kills[$op]:-0} + 1 ))
  else
    completed[$op]=$(( ${completed[$op]:-0} + 1 ))
    [ $rc = 0 ] || problem "$i $op" "exit $rc without being killed: $(tail -3 "$log")"
    # It ran whole before the kill: aim the next kill of this operation earlier.
    [ "${dur[$op]}" -gt 30 ] && dur[$op]=$(( dur[$op] * 2 / 3 ))
  fi
  echo "[$i] $op: $([ $killed = 1 ] && echo "killed after ${delay} ms" || echo "completed (exit $rc) before the kill at ${delay} ms")"

  # 1. No process of the run.
  left=$(left_processes)
  [ -n "$left" ] && leftover "$i $op" "processes after kill -9:"$'\n'"$left"

  # 2. The independent checker: only the dead kmx's temporary files.
  check=$(kmx status --check 2>/dev/null)
  other=$(grep -v ': left by a kmx that was killed' <<< "$check" | grep -v '^$')
  pending=$(( pending + $(grep -c ': left by a kmx that was killed' <<< "$check") ))
  [ -n "$other" ] && problem "$i $op" "status --check after the kill: $other"

  # 3. The root: what a completed or a not-started operation leaves, and the dead kmx's
  #    temporaries.
  extra=$(root_files | grep -v '/\.kmx-tmp-'"$pid"'-' | grep -vxF -f "$work/expect-clean" \
            | grep -vxF -f "$work/expect-installed")
  [ -n "$extra" ] && problem "$i $op" "the root holds $extra"

  # 4. The re-run completes (an uninstall or remove killed after its last step has nothing
  #    left to do, and says so).
  if [ $killed = 1 ]; then
    if ! rerun=$(kmx "${args[@]}" 2>&1); then
      if ! { [ $op = remove ] && grep -q 'is not registered' <<< "$rerun"; } \
         && ! { [ $op = uninstall ] && grep -q 'is not installed for' <<< "$rerun"; }; then
        problem "$i $op" "the re-run failed: $(tail -5 <<< "$rerun")"
      fi
    fi
    dur[$op]=$(( dur[$op] * 11 / 10 + 1 ))
  fi
  case $op in
    add) registered=1 ;;
    install) installed=1; built=1 ;;
    uninstall) installed=0 ;;
    remove) registered=0; built=0; installed=0 ;;
    load-tarball) built=1 ;;
  esac

  # 5. After the re-run: consistent, nothing temporary anywhere, the root as expected.
  if ! check=$(kmx status --check 2>&1) ; then
    problem "$i $op" "status --check after the re-run: $check"
  fi
  tmps=$(temporaries)
  [ -n "$tmps" ] && leftover "$i $op" "temporary files after the re-run: $tmps"
  want=$work/expect-clean
  [ $installed = 1 ] && want=$work/expect-installed
  if ! diff=$(diff "$want" <(root_files)); then
    problem "$i $op" "the root differs from a completed $op: $diff"
  fi
  if [ $installed = 0 ] && [ "$(cat "$root/$mods/kernel/hello.ko" 2>/dev/null)" != "in-tree module" ]; then
    problem "$i $op" "the in-tree module was not restored"
  fi
  deps=$(cat "$root/$mods/modules.dep" 2>/dev/null)
  if [ $installed = 1 ] && ! grep -q '^updates/dkms/hello.ko' <<< "$deps"; then
    problem "$i $op" "modules.dep lacks the installed module"
  fi
  status=$(kmx status --json 2>/dev/null)
  if grep -q '"interrupted"\|"in_progress"' <<< "$status"; then
    problem "$i $op" "an install is still interrupted after the re-run"
  fi
  n=$(jq '[.lines[] | select(.module == "hello") | .installed[] | select(.state == "installed")] | length' <<< "$status")
  [ "$n" = "$installed" ] || problem "$i $op" "status lists $n installs, expected $installed"
done

# Signals at the phases of `kmx install`: exit 130, no process left, the store consistent.
sig_total=0 sig_bad=0
if [ "$SIGNALS" = 1 ]; then
  echo "signals: INT, TERM and HUP at planning, make, strip/check, install and depmod"
  mkdir -p "$work/slowplan" "$work/sigroot/$mods"
  cp "$work/hello/"{hello.c,Kbuild} "$work/slowplan/"
  sed 's/^PACKAGE_NAME=.*/PACKAGE_NAME="slowplan"/' "$work/hello/dkms.conf" > "$work/slowplan/dkms.conf"
  printf 'if [ -n "$kernelver" ]; then sleep 31; fi\n' >> "$work/slowplan/dkms.conf"
  mkdir -p "$work/stripme"
  cp "$work/hello/"{hello.c,Kbuild} "$work/stripme/"
  sed 's/^PACKAGE_NAME=.*/PACKAGE_NAME="stripme"/' "$work/hello/dkms.conf" > "$work/stripme/dkms.conf"
  kmx add "$work/stripme" >/dev/null 2>&1
  kmx add "$work/slowplan" >/dev/null 2>&1
  kmx add "$repo/tests/fixtures/modules/slow" >/dev/null 2>&1
  kmx add "$work/hello" >/dev/null 2>&1
  for sig in INT TERM HUP; do
    for phase in planning make strip install depmod; do
      sig_total=$((sig_total + 1))
      log=$work/sig-$sig-$phase
      case $phase in
        planning) module=slowplan; wait_for='sleep 31'; pause= ;;
        make) module=slow; wait_for='sleep 86400'; pause= ;;
        strip) module=stripme; wait_for='paused at before-strip'; pause=before-strip ;;
        install) module=hello; wait_for='paused at writing-module'; pause=writing-module ;;
        depmod) module=hello; wait_for='paused at before-depmod'; pause=before-depmod ;;
      esac
      HOME=$mark KMX_TEST_PAUSE_AT=$pause "$KMX" install "$module" -t arm64 -k "$release" \
        --root "$work/sigroot" > "$log" 2>&1 &
      pid=$!
      pids+=("$pid")
      ready=0
      for _ in $(seq 600); do
        if [ -n "$pause" ]; then
          grep -q "$wait_for" "$log" && ready=1
        else
          for p in $(procs); do
            { tr '\0' ' ' < "/proc/$p/cmdline"; } 2>/dev/null | grep -q "$wait_for" && ready=1
          done
        fi
        [ $ready = 1 ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      sleep 0.2
      kill -"$sig" "$pid" 2>/dev/null
      wait "$pid"
      rc=$?
      left=$(left_processes)
      bad=
      [ $ready = 1 ] || bad="never reached $phase"
      [ $rc = 130 ] || bad="$bad exit $rc, not 130 ($(tail -2 "$log" | tr '\n' ' '))"
      [ -n "$left" ] && bad="$bad processes left:"$'\n'"$left"
      check=$(kmx status --check 2>&1) || bad="$bad status --check: $check"
      if [ -n "$bad" ]; then
        sig_bad=$((sig_bad + 1))
        echo "  SIG$sig at $phase: $bad"
      else
        echo "  SIG$sig at $phase: exit 130, nothing left"
      fi
      kmx uninstall --all -k "$release" --root "$work/sigroot" >/dev/null 2>&1
    done
  done
fi

secs=$(( ($(now_ms) - started) / 1000 ))
nkills=0
for k in "${kills[@]}"; do nkills=$((nkills + k)); done
summary=""
for op in add build install uninstall remove load-tarball; do
  summary="$summary $op ${kills[$op]:-0}/$(( ${kills[$op]:-0} + ${completed[$op]:-0} ))"
done
echo "kills per operation (killed/run):$summary"
echo "$ITER iterations: $inconsistent inconsistencies, $leftovers leftovers ($nkills killed mid-run) in ${secs}s"
echo "right after the kills, status --check found $pending file(s) left by the killed kmx; the next run removed them all (or the leftovers above say otherwise)"
[ "$SIGNALS" = 1 ] && echo "signals: $((sig_total - sig_bad))/$sig_total gave exit 130 and left nothing"
[ $inconsistent = 0 ] && [ $leftovers = 0 ] && [ $sig_bad = 0 ]
