#!/usr/bin/env bash
# THE test command: installs the real SIP peers if they are missing, then runs every test of the
# workspace (unit, property, end to end with SIPp and Kamailio) and prints a summary.
# Extra arguments go to `cargo test` after `--` (e.g. `scripts/test.sh incoming_call`).
set -euo pipefail

cd "$(dirname "$0")/.."
# kamailio and kamcmd live in /usr/sbin on Debian.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

scripts/install-test-deps.sh

log="$(mktemp -t sipguard-test.XXXXXX)"
trap 'rm -f "$log"' EXIT
start=$SECONDS
status=0
{
    cargo test --workspace --all-targets --no-fail-fast -- "$@" &&
        cargo test --workspace --doc --no-fail-fast -- "$@"
} 2>&1 </dev/null | tee "$log" || status=$?
elapsed=$((SECONDS - start))

passed=0 failed=0 ignored=0
while read -r p f i; do
    passed=$((passed + p)) failed=$((failed + f)) ignored=$((ignored + i))
done < <(sed -nE 's/^test result: [A-Za-z]+\. ([0-9]+) passed; ([0-9]+) failed; ([0-9]+) ignored.*/\1 \2 \3/p' "$log")

echo
echo "==================== sipguard test summary ===================="
echo "passed: $passed   failed: $failed   ignored: $ignored   time: ${elapsed}s"
if [ "$status" -ne 0 ]; then
    failures="$(sed -nE 's/^test (.+) \.\.\. FAILED$/  \1/p' "$log" | sort -u)"
    if [ -n "$failures" ]; then
        echo "failed tests:"
        echo "$failures"
    else
        echo "cargo test failed before running every test (build error?); see above"
    fi
    echo "RESULT: FAIL"
    exit "$status"
fi
echo "RESULT: PASS"
