#!/usr/bin/env bash
# make chaos: the crash-simulation, power-cut and history-checking suites, each for
# CHAOS_DURATION (default 2m), then one verdict table. Every suite logs "VERDICT <suite>: k=v ..."
# lines; this script only runs them and tabulates those lines, so the suites stay the judges.
#
#   CHAOS_DURATION=10m make chaos      # longer
#   CHAOS_DURATION=20s make chaos      # what CI runs
#
# The power-cut suite mounts a FUSE file system: it needs root and /dev/fuse (it skips otherwise,
# and the table says so).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CHAOS_DURATION="${CHAOS_DURATION:-2m}"
out="${ARTIFACTS:-$PWD/.chaos}"
mkdir -p "$out"
export ARTIFACTS="$out" # porcupine's visualizations of a rejected history land here
log="$out/chaos.log"
: >"$log"

status=0 passed=0 failed=0
run() { # name, go test arguments...
	local name=$1
	shift
	echo "== $name (CHAOS_DURATION=$CHAOS_DURATION)"
	if go test -count=1 -v -timeout 60m "$@" >>"$log" 2>&1; then
		passed=$((passed + 1))
	else
		echo "   FAILED: see $log"
		status=1 failed=$((failed + 1))
	fi
}

run "event log: a power cut at every operation, random cuts of long runs, failed fsyncs" \
	./internal/eventlog/ -run 'TestPowerCut|TestFailedWriteOrSync' -args -crash.duration="$CHAOS_DURATION"
run "vending writer: power cuts while serving keyed customers" \
	./internal/vendingpod/ -run 'TestVendingWriterPowerCuts'
run "the real binary on lazyfs: power cuts under keyed customers, porcupine" \
	./test/powercut/ -args -powercut.duration="$CHAOS_DURATION"
run "the history checker rejects what it must" \
	./internal/history/

echo
printf '%-78s %7s %9s %5s %5s %8s %7s\n' suite cuts acked lost dup refused linear.
grep -h 'VERDICT ' "$log" | sed 's/^.*VERDICT //' | awk '
	{
		name = $0; sub(/: .*/, "", name)
		cuts = acked = lost = dup = refused = lin = "-"
		for (i = 1; i <= NF; i++) {
			split($i, kv, "=")
			if (kv[1] == "cuts") cuts = kv[2]
			if (kv[1] == "acknowledged" || kv[1] == "acknowledged-checked") acked = kv[2]
			if (kv[1] == "lost") lost = kv[2]
			if (kv[1] == "duplicated" || kv[1] == "answered-differently") dup = kv[2]
			if (kv[1] == "refused-as-corrupt") refused = kv[2]
			if (kv[1] == "linearizable") lin = kv[2]
		}
		printf "%-78.78s %7s %9s %5s %5s %8s %7s\n", name, cuts, acked, lost, dup, refused, lin
	}'
grep -h -- '--- SKIP' "$log" | sed 's/^/skipped: /'
echo
if [ "$status" -ne 0 ]; then
	grep -h -E -- '--- FAIL|^FAIL' "$log" | head -20
fi
echo "log: $log"
echo "chaos: $passed passed, $failed failed"
exit "$status"
