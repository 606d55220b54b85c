#!/usr/bin/env bash
# The full-size scenarios (BLOBSYNC_TEST_FULL=1: 500 random ops, 10 crash rounds, a 200 MB
# transfer through faults, 5 users x 4 devices x 200 blobs), too slow for every CI run: run
# nightly, or by hand before a release, from the repo root:
#
#   bash tests/full.sh [BUDGET_SECONDS]      # default budget 1800 s for the whole run
#
# Builds the binaries, runs each scenario under the budget left, prints a summary and writes it
# to tests/FULL_RESULTS.md (date, commit, result and time per test) for committing. Exits 1 if
# any scenario failed or the budget ran out.
set -uo pipefail
cd "$(dirname "$0")/.."

budget=${1:-1800}
export BLOBSYNC_TEST_FULL=1
unset BLOBSYNC_SKIP_SLOW
export CARGO_TERM_COLOR=never

cargo build --workspace --bins || exit 1
cargo nextest run --no-run -p blobsync-tests \
    --test two_devices --test crashes --test transfer_faults --test load || exit 1

# test binary : test-name filter
scenarios=(
    "two_devices:two_devices_converge_after_random_operations"
    "crashes:daemon_killed_mid_transfer_converges_without_loss"
    "crashes:server_killed_mid_upload_and_mid_download_converges"
    "transfer_faults:"
    "load:"
)

start=$(date +%s)
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!tests/FULL_RESULTS.md' || echo "+dirty")
rows=""
failed=0
for s in "${scenarios[@]}"; do
    bin=${s%%:*}
    name=${s#*:}
    left=$((budget - ($(date +%s) - start)))
    label="$bin${name:+ $name}"
    if [ "$left" -le 0 ]; then
        rows+="| $label | not run: budget of ${budget} s used up | - |"$'\n'
        failed=1
        continue
    fi
    filter=()
    [ -n "$name" ] && filter=(-E "test($name)")
    t0=$(date +%s)
    log=$(mktemp)
    if timeout "$left" cargo nextest run -p blobsync-tests --test "$bin" "${filter[@]}" \
        --no-fail-fast >"$log" 2>&1; then
        result=PASS
    else
        rc=$?
        if [ "$rc" -eq 124 ]; then result="TIMEOUT (budget)"; else result=FAIL; fi
        failed=1
        # Keep the seed and the first failure message in the record.
        why=$(grep -m1 -oE 'BLOBSYNC_TEST_SEED=[0-9]+' "$log" || true)
        [ -n "$why" ] && result+=" ($why)"
        tail -n 40 "$log"
    fi
    secs=$(($(date +%s) - t0))
    echo "$label: $result in ${secs}s"
    rows+="| $label | $result | $secs |"$'\n'
    rm -f "$log"
done

{
    echo "# Full-size scenarios: last run"
    echo
    echo "Written by \`tests/full.sh\` (\`BLOBSYNC_TEST_FULL=1\`); commit it after a run."
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "- commit: \`$commit\`"
    echo "- machine: $(nproc) cores, budget ${budget} s, $(uname -sr)"
    echo
    echo "| scenario | result | seconds |"
    echo "|---|---|---|"
    printf '%s' "$rows"
} >tests/FULL_RESULTS.md
cat tests/FULL_RESULTS.md
exit "$failed"
