#!/usr/bin/env bash
# Runs the fuzz targets one at a time and prints, per target, what libFuzzer reported at the end:
# executions, coverage (cov: edges, ft: features), corpus size and whether it crashed.
#
#   perf/fuzz.sh                      # every target in fuzz/Cargo.toml, MINUTES=10 each
#   MINUTES=1 perf/fuzz.sh chunked upstream_head
#   SECONDS_EACH=15 FUZZ_BUILD=--dev perf/fuzz.sh   # CI: the debug build `cargo fuzz build --dev` made
#   JSON=out.json perf/fuzz.sh        # also writes the table as JSON
#   FUZZ_BIN_DIR=/tmp/bins perf/fuzz.sh   # run copies of built targets (no cargo; a rebuild of
#                                         # the crate meanwhile does not touch the running ones)
#
# Each target starts from its committed seed corpus (fuzz/corpus/<target>/), read-only: what it
# finds goes to a private working corpus under $TMPDIR, so a run never grows the committed one.
# A crash stops that target (libFuzzer's default); its input is kept in fuzz/artifacts/<target>/
# and the script exits 1 after the table. Needs cargo-fuzz; RUSTC_BOOTSTRAP=1 lets stable build.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

MINUTES=${MINUTES:-10}
SECONDS_EACH=${SECONDS_EACH:-$(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 }')}
FUZZ_BUILD=${FUZZ_BUILD:-}
FUZZ_BIN_DIR=${FUZZ_BIN_DIR:-}
JSON=${JSON:-}
export RUSTC_BOOTSTRAP=1

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^wgbroker-fuzz$')
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# shellcheck disable=SC2086  # FUZZ_BUILD is empty or one flag
[ -n "$FUZZ_BIN_DIR" ] || cargo fuzz build $FUZZ_BUILD

rows=()
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "corpus/$t" "artifacts/$t"
  log="$work/$t.log"
  echo "fuzzing $t for ${SECONDS_EACH}s ..." >&2
  status=ok
  if [ -n "$FUZZ_BIN_DIR" ]; then
    "$FUZZ_BIN_DIR/$t" "$work/$t" "corpus/$t" -artifact_prefix="artifacts/$t/" \
      -max_total_time="$SECONDS_EACH" -print_final_stats=1 >"$log" 2>&1 || status=crash
  else
    # shellcheck disable=SC2086
    cargo fuzz run $FUZZ_BUILD "$t" "$work/$t" "corpus/$t" -- \
      -max_total_time="$SECONDS_EACH" -print_final_stats=1 >"$log" 2>&1 || status=crash
  fi
  # The last status line: "#1234 DONE cov: 567 ft: 890 corp: 12/3456b ..." (or pulse/NEW lines
  # when it stopped on a crash).
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  [ -n "$runs" ] || runs=$(sed -n 's/^#\([0-9]*\).*/\1/p' <<<"$last")
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<<"$last")
  artifact=""
  if [ "$status" = crash ]; then
    failed=1
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    cp "$log" "artifacts/$t/last-crash.log"
    grep -m 3 -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" >&2 || true
  fi
  rows+=("$t ${SECONDS_EACH} ${runs:-0} ${cov:-0} ${ft:-0} ${corp:-0} $status ${artifact:--}")
done

printf '\n%-16s %6s %12s %7s %7s %6s  %-6s %s\n' target secs runs cov ft corpus result artifact
for r in "${rows[@]}"; do
  # shellcheck disable=SC2086
  printf '%-16s %6s %12s %7s %7s %6s  %-6s %s\n' $r
done

if [ -n "$JSON" ]; then
  {
    printf '{\n  "command": "MINUTES=%s perf/fuzz.sh",\n  "targets": [\n' "$MINUTES"
    n=${#rows[@]}
    for i in "${!rows[@]}"; do
      read -r t s runs cov ft corp st _ <<<"${rows[$i]}"
      printf '    {"target": "%s", "seconds": %s, "runs": %s, "cov": %s, "ft": %s, "corpus": %s, "result": "%s"}' \
        "$t" "$s" "$runs" "$cov" "$ft" "$corp" "$st"
      [ "$i" -lt $((n - 1)) ] && printf ',\n' || printf '\n'
    done
    printf '  ]\n}\n'
  } >"$JSON"
fi
exit "$failed"
