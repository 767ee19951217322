#!/usr/bin/env bash
# The quick suite under every kernel choice the engine can make on this machine, one after
# another: SPECBENCH_KERNELS forced to aten, gemv and onednn, the fused C step forced on and off,
# and the timed choice (auto) in an empty $SPECBENCH_HOME. Each session has its own temporary
# home (tests/conftest.py); SPECBENCH_TEST_<NAME>=value becomes SPECBENCH_<NAME> for a whole
# session (a test that pins its own kernels keeps them). Also available: amx=on (cpu.c's bf16
# products on AMX tiles where the CPU has them).
#
#   tests/all_kernels.sh                 every mode (~5 minutes each on 2 cores)
#   tests/all_kernels.sh -x -k fused     extra arguments go to each pytest
#   MODES="gemv fused=off" tests/all_kernels.sh
#
# Logs: $LOGS (default /tmp/specbench-all-kernels/<mode>.log). Exit status: non-zero if any
# mode failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
MODES="${MODES:-aten gemv onednn fused=on fused=off auto}"
LOGS="${LOGS:-/tmp/specbench-all-kernels}"
mkdir -p "$LOGS"
# Each mode alone: no SPECBENCH_TEST_* of the caller's (a home, a forced choice) reaches it.
clear=()
for name in $(compgen -e | grep '^SPECBENCH_TEST_'); do clear+=(-u "$name"); done
failed=()
summary=()
for mode in $MODES; do
    env=()
    case "$mode" in
        aten|gemv|onednn) env=("SPECBENCH_TEST_KERNELS=$mode") ;;
        fused=on|fused=off) env=("SPECBENCH_TEST_FUSED=${mode#fused=}") ;;
        amx=on|amx=off) env=("SPECBENCH_TEST_AMX=${mode#amx=}") ;;
        auto) ;;
        *) echo "unknown mode '$mode': choose from aten gemv onednn fused=on fused=off amx=on" \
                "auto" >&2
           exit 2 ;;
    esac
    log="$LOGS/${mode/=/-}.log"
    echo "== $mode ${env[*]:-(timed choice, empty home)}: $log"
    start=$SECONDS
    { echo "mode $mode: ${env[*]:-timed choice}"
      env "${clear[@]}" "${env[@]}" "$PYTHON" -m pytest -q -p no:cacheprovider "$@"
    } >"$log" 2>&1
    rc=$?
    line="$(grep -E '^(=+ )?[0-9]+ (passed|failed)|no tests ran|error' "$log" | tail -1)"
    summary+=("$(printf '%-10s rc=%d %4ds  %s' "$mode" "$rc" $((SECONDS - start)) "$line")")
    echo "   ${summary[-1]}"
    [ "$rc" -eq 0 ] || failed+=("$mode")
done
echo
echo "== summary"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "failed: ${failed[*]} (logs in $LOGS)"
    exit 1
fi
