#!/usr/bin/env bash
# Big bodies in bounded memory: a 4 GiB download and a 4 GiB chunked upload through the tunnel to a
# real `wgbroker run` process, byte-exact (generated streams, checked on both ends; nothing of
# that size is stored anywhere), printing the broker's idle RSS and its peak RSS during each.
# The test kit's gateway and the mock SCM run in the test process on loopback (no root needed).
#
#   perf/bigbody.sh [path/to/wgbroker]     (default: target/release/wgbroker, built if missing)
#   BYTES=$((1 << 30)) perf/bigbody.sh     (each way; default 4 GiB)
#
# It is the integration test `bigbody` (128 MiB in `cargo test`) at a larger size, built with
# --release so that the test kit's gateway keeps up; it fails when a body differs or the broker's
# peak RSS exceeds idle by more than 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/wgbroker}
BYTES=${BYTES:-$((4 << 30))}
[[ $BYTES =~ ^[0-9]+$ ]] || { echo "BYTES: a number of bytes" >&2; exit 64; }
[ -x "$BIN" ] || cargo build --release --bin wgbroker
cargo test --release --test it --no-run 2>/dev/null
echo "broker: $("$BIN" --version) ($BIN, $(sha256sum "$BIN" | cut -c1-12)) at $(git rev-parse --short HEAD); load $(cut -d' ' -f1-3 /proc/loadavg)"
WGBROKER_BIN=$(realpath "$BIN") WGBROKER_BIGBODY_BYTES=$BYTES \
  cargo test --release --test it bigbody::big -- --nocapture 2>&1 | grep -E '^bigbody:|test result|panicked|FAILED'
