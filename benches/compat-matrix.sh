#!/usr/bin/env bash
# Ground truth for `kmx compat`, long form: the compatibility matrix of the example over
# more kernel ABIs than `./dev test` fetches, every (module built for A, kernel B) pair of
# arm64 and amd64 booted under QEMU (tests/it/compat.rs over a bigger home).
#
#   benches/compat-matrix.sh [ABI]...   (default: 6.12.95+deb12, bookworm-backports')
#
# Works on KMX_HOME (default target/kmx-home, as `./dev test` left it): each ABI given is
# fetched with its kernel images for arm64 and amd64 (pinned, from whichever source of the
# targets carries it), then the test runs with KMX_TEST_HOME pointing there and prints the
# table of every pair and the wall time. Each extra ABI adds 2 x (ABIs) pairs per target
# and one boot per target; remove it afterwards with `kmx kernels remove RELEASE`.
set -euo pipefail
cd "$(dirname "$0")/.."
export KMX_HOME="${KMX_HOME:-$PWD/target/kmx-home}"
cargo build --release --quiet --bin kmx
[ $# -gt 0 ] || set -- 6.12.95+deb12
for abi in "$@"; do
  target/release/kmx kernels fetch --abi "$abi" --with-image --target arm64,amd64
done
target/release/kmx kernels list | grep -E '^(TARGET|arm64|amd64) '
start=$(date +%s)
KMX_COMPAT_TARGETS=arm64,amd64 KMX_TEST_HOME="$KMX_HOME" CI=true cargo test --release --quiet --test it \
  compat::the_compat_matrix_agrees_with_the_booted_kernels_on_every_pair -- --nocapture
echo "compat matrix ground truth: $(( $(date +%s) - start )) s"
