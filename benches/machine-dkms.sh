#!/usr/bin/env bash
# kmx as the machine's own DKMS, end to end, against Debian's real DKMS (issue 23).
#
#   benches/machine-dkms.sh                 (on the host, as root: runs both sides, compares)
#   benches/machine-dkms.sh inside kmx|dkms (one side, inside a fresh Debian 12 root)
#   benches/machine-dkms.sh compare KMX_LOG DKMS_LOG   (the RESULT lines of two sides' logs)
#   benches/machine-dkms.sh migrate         (on the host, as root: DKMS -> kmx -> DKMS in one
#                                            fresh root, see migrate() below)
#
# Last, that root's kernel (/boot/vmlinuz-RELEASE, as apt installed it) is booted under QEMU
# with an initramfs holding busybox and the root's own /lib/modules/RELEASE tree (the two
# modules, what modules.dep says they need, and depmod's files), and `modprobe NAME` loads
# each module by name: the kernel's verdict, on both sides.
#
# Each side runs in its own freshly installed Debian 12 root (../shared/tools/fresh-run.sh,
# or $FRESH_RUN): the tool installed with apt (kmx: its own .deb and kmx-dkms, `./dev
# package`; DKMS: Debian's `dkms`), the bundled example (examples/hello, AUTOINSTALL=yes)
# registered, a real *-dkms package from Debian's archive installed with apt ($PKG, default
# v4l2loopback-dkms: its dh_dkms maintainer scripts call `dkms`, which is kmx on the kmx
# side), then `apt-get install linux-headers-amd64 linux-image-amd64`, exactly as a user
# upgrades a kernel. What each left is printed as `RESULT` lines, for each module: its path
# under /lib/modules, its vermagic, whether its signature verifies with that tool's own key
# (openssl cms over the module's appended PKCS#7), modules.dep, `modprobe -n`, whether the
# initramfs has it; then the `status` lines (kmx status --format dkms / dkms status), the hook
# order, what removing the package leaves, and what removing the kernel leaves. The host side prints both and compares them line by line:
# the keys differ by design (each tool its own), nothing else may.
set -euo pipefail
cd "$(dirname "$0")/.."
PKG=${PKG:-v4l2loopback-dkms}
# The module the package builds (its BUILT_MODULE_NAME).
PKG_MODULE=${PKG_MODULE:-v4l2loopback}

result() { echo "RESULT $*"; }

# The appended signature of module $1 verifies with DER certificate $2: split the module
# (content | PKCS#7 | struct module_signature (12 bytes, sig_len big-endian in its last 4) |
# "~Module signature appended~\n" (28 bytes)) and let openssl check it.
sig_valid() {
  local ko=$1 cert=$2 tmp size len
  tmp=$(mktemp -d)
  size=$(stat -c %s "$ko")
  [ "$(tail -c 28 "$ko")" = "~Module signature appended~" ] || { echo unsigned; rm -rf "$tmp"; return; }
  len=$(tail -c 32 "$ko" | head -c 4 | od -An -tu1 | awk '{print $1*16777216+$2*65536+$3*256+$4}')
  head -c $((size - 40 - len)) "$ko" >"$tmp/content"
  tail -c $((40 + len)) "$ko" | head -c "$len" >"$tmp/sig.p7"
  openssl x509 -inform DER -in "$cert" -out "$tmp/cert.pem"
  if openssl cms -verify -binary -inform DER -in "$tmp/sig.p7" -content "$tmp/content" \
      -certfile "$tmp/cert.pem" -nointern -noverify -out /dev/null 2>"$tmp/err"; then
    echo "valid ($(openssl x509 -inform DER -in "$cert" -noout -subject))"
  else
    echo "INVALID: $(tr '\n' ' ' <"$tmp/err")"
  fi
  rm -rf "$tmp"
}

# Boot /boot/vmlinuz-$1 under QEMU with an initramfs made of busybox and the modules of
# /lib/modules/$1 that modprobe needs for the modules named after it (modules.dep's closure),
# then `modprobe` each by name and print the kernel's verdict as RESULT lines.
boot_and_modprobe() {
  local r=$1 m dir mods line dep br=${BOOT_ROOT:-}
  shift
  [ -n "$br" ] || apt-get install -y -q --no-install-recommends qemu-system-x86 busybox-static >/dev/null
  dir=$(mktemp -d)
  mkdir -p "$dir/bin" "$dir/lib/modules/$r" "$dir/proc" "$dir/sys" "$dir/dev" "$dir/tmp"
  cp "$br"/bin/busybox "$dir/bin/busybox"
  for a in sh modprobe lsmod mount cat grep poweroff sleep dmesg; do ln -s busybox "$dir/bin/$a"; done
  cp "$br"/lib/modules/"$r"/modules.* "$dir/lib/modules/$r/"
  # Each named module and what it depends on, from modules.dep, at their own paths.
  mods=""
  for m in "$@"; do
    line=$(grep -E "(^|/)$m\.ko(\.[a-z]+)?:" "$br"/lib/modules/"$r"/modules.dep || true)
    [ -n "$line" ] && mods="$mods ${line%%:*} ${line#*:}"
  done
  for dep in $mods; do
    mkdir -p "$dir/lib/modules/$r/$(dirname "$dep")"
    cp "$br"/lib/modules/"$r"/"$dep" "$dir/lib/modules/$r/$dep"
  done
  cat >"$dir/init" <<INIT
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $*; do
  if modprobe \$m 2>/tmp/err; then echo "KMXBOOT \$m: loaded by modprobe"; else echo "KMXBOOT \$m: REFUSED \$(cat /tmp/err)"; fi
done
lsmod | grep -E '^($(echo "$*" | tr ' ' '|')) ' | sed 's/^/KMXBOOT lsmod: /'
dmesg | grep -iE 'disagrees|version magic|module verification|Unknown symbol' | sed 's/^/KMXBOOT dmesg: /'
poweroff -f
INIT
  chmod 755 "$dir/init"
  (cd "$dir" && find . | cpio -o -H newc --quiet | gzip -1) >"$dir.cpio.gz"
  timeout 600 qemu-system-x86_64 -m 1024 -nographic -no-reboot -kernel "$br"/boot/vmlinuz-"$r" \
    -initrd "$dir.cpio.gz" -append "console=ttyS0 panic=-1 quiet" >"$dir.log" 2>&1 || true
  for m in "$@"; do
    line=$(grep -ao "KMXBOOT $m:.*" "$dir.log" | head -n1 | tr -d '\r')
    result "booted $r: ${line#KMXBOOT }"
    [ -n "$line" ] || { result "booted $r: $m: NO VERDICT"; tail -n 20 "$dir.log"; }
  done
  grep -a 'KMXBOOT \(lsmod\|dmesg\)' "$dir.log" | tr -d '\r' | sed 's/^/   /'
  rm -rf "$dir" "$dir.cpio.gz" "$dir.log"
}

inside() {
  local tool=$1 t0 cert
  export DEBIAN_FRONTEND=noninteractive
  t0=$(date +%s)
  apt-get update -q >/dev/null
  case $tool in
    kmx)
      # What the README tells a user: build the package, install it with apt.
      apt-get install -y -q --no-install-recommends build-essential dpkg-dev binutils >/dev/null
      ./dev package
      apt-get install -y -q ./target/debian/kmx_*_amd64.deb ./target/debian/kmx-dkms_*_all.deb >/dev/null
      echo "== kmx installed after $(( $(date +%s) - t0 )) s"
      kmx add examples/hello
      cert=/var/lib/kmx/keys/mok.der
      ;;
    dkms)
      # Without Recommends: they would bring linux-headers-amd64 before the kernel.
      apt-get install -y -q --no-install-recommends dkms >/dev/null
      echo "== dkms $(dpkg-query -W -f '${Version}' dkms) installed after $(( $(date +%s) - t0 )) s"
      cp -r examples/hello /usr/src/hello-1.0
      dkms add -m hello -v 1.0
      cert=/var/lib/dkms/mok.pub
      ;;
  esac
  echo "== apt-get install $PKG (no kernel yet: registered only)"
  apt-get install -y -q --no-install-recommends "$PKG" 2>&1 | tee /tmp/pkg.log
  local t1
  t1=$(date +%s)
  echo "== apt-get install linux-headers-amd64 linux-image-amd64"
  apt-get install -y -q linux-headers-amd64 linux-image-amd64 2>&1 | tee /tmp/apt.log
  echo "== kernel installed in $(( $(date +%s) - t1 )) s"
  local r ko m
  r=$(ls /lib/modules | sort -V | tail -n1)
  result "kernel $r"
  # The order as apt ran them: the modules installed before the initramfs was generated?
  result "order: $(grep -oE 'update-initramfs: Generating|installed hello|Installing to' /tmp/apt.log \
    | sed -E 's/^(installed hello|Installing to).*/module/; s/^update-initramfs.*/initramfs/' | uniq | tr '\n' ' ')"
  for m in hello "$PKG_MODULE"; do
    ko=$(find /lib/modules/"$r" -name "$m.ko*" | sort | head -n1)
    if [ -z "$ko" ]; then
      result "$m: MISSING under /lib/modules/$r"
      continue
    fi
    result "$m: ${ko#/lib/modules/"$r"/}"
    result "$m: vermagic '$(modinfo -F vermagic "$ko")'"
    echo "   $m: signer '$(modinfo -F signer "$ko")' (each tool its own key)"
    result "$m: signature $(sig_valid "$ko" "$cert" | sed 's/(subject=.*)/(own key)/')"
    grep -q "updates/dkms/$m.ko" /lib/modules/"$r"/modules.dep && result "$m: modules.dep yes" || result "$m: modules.dep NO"
    modprobe --dry-run --dirname / --set-version "$r" "$m" >/dev/null 2>&1 && result "$m: modprobe -n ok" || result "$m: modprobe -n FAILED"
    if lsinitramfs /boot/initrd.img-"$r" 2>/dev/null | grep -q "/$m.ko"; then result "$m: in the initramfs"; else result "$m: not in the initramfs"; fi
  done
  echo "   key: $cert"
  local status
  case $tool in
    kmx) status=$(dkms status); kmx status ;;
    dkms) status=$(dkms status) ;;
  esac
  echo "$status" | sort | while read -r line; do result "status: $line"; done
  boot_and_modprobe "$r" hello "$PKG_MODULE"
  echo "== apt-get remove $PKG"
  apt-get remove -y -q "$PKG" >/tmp/pkgrm.log 2>&1 || { cat /tmp/pkgrm.log; exit 1; }
  sed 's/^/   package removal: /' /tmp/pkgrm.log | grep -iE 'dkms|kmx|remov|uninstall' || true
  if find /lib/modules/"$r" -name "$PKG_MODULE.ko*" 2>/dev/null | grep -q .; then result "after package removal: $PKG_MODULE LEFT"; else result "after package removal: $PKG_MODULE gone"; fi
  result "after package removal: status '$(dkms status | grep "$PKG_MODULE" || true)'"
  echo "== removing the kernel"
  apt-get remove -y -q "linux-image-$r" "linux-headers-$r" linux-image-amd64 linux-headers-amd64 >/tmp/rm.log 2>&1 || { cat /tmp/rm.log; exit 1; }
  if find /lib/modules/"$r" -name 'hello.ko*' 2>/dev/null | grep -q .; then result "after removal: module LEFT"; else result "after removal: module gone"; fi
  # Not compared: when a kernel's removal leaves a module built for no kernel, DKMS 3.0
  # deletes the module from its tree ("Deleting module ... completely from the DKMS tree"),
  # so the next kernel does not get it; kmx keeps it registered (`hello/1.0: added`).
  case $tool in
    kmx) echo "   status after removal: '$(kmx status --format dkms | tr '\n' ' ')'" ;;
    dkms) echo "   status after removal: '$(dkms status | tr '\n' ' ')'" ;;
  esac
  grep -iE 'kmx|dkms|Deleting' /tmp/rm.log | sed 's/^/   removal: /' || true
  echo "== $tool side done in $(( $(date +%s) - t0 )) s"
}

# From DKMS to kmx and back, in one root: Debian's DKMS with $PKG and a kernel installed
# (DKMS builds and installs its module); then kmx's packages installed with apt (kmx-dkms
# replaces dkms, its postinst takes over DKMS's registrations: kmx builds, and replaces
# DKMS's installed copy with its own signed one); the package removed and installed again
# through kmx; then back to DKMS (`kmx remove` of what the package brought, `apt-get install
# dkms`, the package reinstalled: DKMS builds and installs again). Prints MIGRATION lines.
migrate_inside() {
  export DEBIAN_FRONTEND=noninteractive
  local t0 r ko
  t0=$(date +%s)
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends dkms "$PKG" >/dev/null
  apt-get install -y -q linux-headers-amd64 linux-image-amd64 >/tmp/k.log 2>&1 || { cat /tmp/k.log; exit 1; }
  r=$(ls /lib/modules | sort -V | tail -n1)
  ko() { find /lib/modules/"$r" -name "$PKG_MODULE.ko*" | sort | head -n1; }
  say() { echo "MIGRATION $*"; }
  say "with DKMS: $(ko | sed "s|/lib/modules/$r/||"), signer '$(modinfo -F signer "$(ko)")'; dkms status: $(dkms status | tr '\n' ' ')"
  echo "== DKMS side ready after $(( $(date +%s) - t0 )) s; building kmx's packages"
  apt-get install -y -q --no-install-recommends build-essential dpkg-dev binutils >/dev/null
  ./dev package >/dev/null
  apt-get install -y -q ./target/debian/kmx_*_amd64.deb ./target/debian/kmx-dkms_*_all.deb 2>&1 | tee /tmp/to-kmx.log | grep -E 'kmx-dkms|Removing dkms|error' || true
  say "dkms package: $(dpkg-query -W -f '${Status}' dkms 2>/dev/null || echo 'not installed')"
  say "to kmx: $(ko | sed "s|/lib/modules/$r/||"), signer '$(modinfo -F signer "$(ko)")'; dkms status: $(dkms status | tr '\n' ' ')"
  grep -q "$PKG_MODULE.ko" /lib/modules/"$r"/modules.dep && say "to kmx: modules.dep has it" || say "to kmx: modules.dep LACKS it"
  apt-get remove -y -q "$PKG" >/dev/null 2>&1
  say "package removed under kmx: module $( [ -n "$(ko)" ] && echo LEFT || echo gone ); dkms status: '$(dkms status | tr '\n' ' ')'"
  apt-get install -y -q --no-install-recommends "$PKG" >/dev/null 2>&1
  say "package installed under kmx: $(ko | sed "s|/lib/modules/$r/||"), signer '$(modinfo -F signer "$(ko)")'"
  echo "== back to DKMS"
  kmx remove "$PKG_MODULE" --all >/dev/null 2>&1 || true
  apt-get install -y -q --no-install-recommends dkms >/dev/null 2>&1
  apt-get install -y -q --reinstall --no-install-recommends "$PKG" >/tmp/back.log 2>&1 || { cat /tmp/back.log; exit 1; }
  say "back to DKMS: $(ko | sed "s|/lib/modules/$r/||"), signer '$(modinfo -F signer "$(ko)")'; dkms status: $(dkms status | tr '\n' ' ')"
  echo "== migration done in $(( $(date +%s) - t0 )) s"
}

if [ "${1:-}" = boot ]; then
  # boot RELEASE MODULE... (BOOT_ROOT: a root holding boot/ and lib/modules/, default /)
  shift
  boot_and_modprobe "$@"
  exit 0
fi
if [ "${1:-}" = inside ]; then
  inside "$2"
  exit 0
fi
if [ "${1:-}" = migrate-inside ]; then
  migrate_inside
  exit 0
fi
if [ "${1:-}" = migrate ]; then
  FRESH_RUN=${FRESH_RUN:-../shared/tools/fresh-run.sh}
  out=$(mktemp -d)
  "$FRESH_RUN" . "bash benches/machine-dkms.sh migrate-inside" 3000 | tee "$out/run"
  log=$(sed -n 's/^log: //p' "$out/run")
  grep -E '^(MIGRATION|== )' "$log"
  exit 0
fi

# compare KMX_LOG DKMS_LOG: the RESULT lines of two runs' logs, kmx (<) against DKMS (>).
compare() {
  local out=$1 kmx_log=$2 dkms_log=$3
  grep '^RESULT' "$kmx_log" | sed 's/^RESULT //' >"$out/kmx.res"
  grep '^RESULT' "$dkms_log" | sed 's/^RESULT //' >"$out/dkms.res"
  echo "== kmx (<) against DKMS (>)"
  if diff "$out/kmx.res" "$out/dkms.res"; then
    echo "== same results ($(wc -l <"$out/kmx.res") lines)"
  else
    echo "== results differ (above)"
    return 1
  fi
}

if [ "${1:-}" = compare ]; then
  out=$(mktemp -d)
  compare "$out" "$2" "$3"
  exit $?
fi

FRESH_RUN=${FRESH_RUN:-../shared/tools/fresh-run.sh}
[ -x "$FRESH_RUN" ] || { echo "no $FRESH_RUN: set FRESH_RUN to fresh-run.sh" >&2; exit 3; }
out=$(mktemp -d)
start=$(date +%s)
for tool in kmx dkms; do
  echo "== $tool side in a fresh Debian 12 root"
  "$FRESH_RUN" . "bash benches/machine-dkms.sh inside $tool" 3000 | tee "$out/$tool.run"
  log=$(sed -n 's/^log: //p' "$out/$tool.run")
  grep -E '^(RESULT|== |   )' "$log" | tee "$out/$tool.txt" || true
done
rc=0
compare "$out" "$out/kmx.txt" "$out/dkms.txt" || rc=1
echo "== both sides in $(( $(date +%s) - start )) s"
exit $rc
