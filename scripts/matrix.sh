#!/usr/bin/env bash
# scripts/matrix.sh — run the avocado end-to-end tests (tests/avocado) over
# the variant matrix and print a results table.
#
# Usage: scripts/matrix.sh [--smoke | --full | --bench] [options]
#   --full (default)  tests/avocado/matrix.yaml: queues {1,2,4} x vCPUs {1,2}
#                     x NN_CORE_KERNEL {auto,scalar} x model {default,large}
#                     x kernel {plain,debug} = 48 cells, every test
#                     (Functional + Faults + Supervisor, 16 tests a cell;
#                     the 12 before Supervisor took 92 min with
#                     --parallel 2 on 2 cores under TCG, most of it in the
#                     debug cells)
#   --smoke           tests/avocado/smoke.yaml: 3 cells (plain q2/smp2/auto/
#                     default, plain q4/smp1/scalar/large, debug q1/smp2/auto/
#                     default), every test (17 min after the builds on a
#                     loaded 2-core machine; Supervisor ~35 s of it per
#                     plain cell, ~2 min on the debug cell);
#                     what scripts/test.sh runs
#   --bench           the end-to-end figures (tests/avocado/bench_nn.py) on
#                     the default cell (plain, q1, smp1): one table
#   --build-debug     build the debug kernel and module first if missing
#                     (scripts/build-kernel.sh --variant debug,
#                     scripts/build-debug-module.sh; ~10-20 min)
#   --filter PATH..   only these variants (avocado --mux-filter-only, e.g.
#                     /run/kernel/plain or /run/cell/plain-q2-smp2-auto-default)
#   --tests SPEC      test references, relative to the repository (default:
#                     tests/avocado/test_nn.py and test_supervisor.py), e.g.
#                     tests/avocado/test_nn.py:Functional
#   --results DIR     avocado's job results (default $CACHE/avocado-results)
#   --parallel N      N guests at a time (default 1; the machines are small
#                     and shared, and the fault tests have timing windows)
#
# Debug cells whose kernel or module is not built are CANCELled by the tests
# (with the command to build them), never passed. Each job directory holds
# avocado's results.json, results.html (HTML report) and per-test logs
# (daemon, QEMU, guest console, guest dmesg); the table is also written to
# the job directory as matrix-table.md. Exit status: avocado's (0 = no
# failure or error).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mode=full build_debug=0 filters=() tests="" results="$CACHE/avocado-results" parallel=1
while (($#)); do
    case "$1" in
        --full) mode=full; shift ;;
        --smoke) mode=smoke; shift ;;
        --bench) mode=bench; shift ;;
        --build-debug) build_debug=1; shift ;;
        --filter) shift; while (($#)) && [[ $1 != --* ]]; do filters+=("$1"); shift; done ;;
        --tests) tests="$2"; shift 2 ;;
        --results) results="$2"; shift 2 ;;
        --parallel) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--parallel needs a number of guests"
                    parallel="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

PY="$("$REPO/scripts/setup-avocado.sh")"
AVOCADO="$(dirname "$PY")/avocado"
[[ -x $REPO/target/release/vhost-user-nn && -x $REPO/target/release/nn-model ]] ||
    die "host binaries missing: scripts/build.sh (cargo build --release)"
[[ -f $KERNEL_IMAGE && -f $REPO/guest-driver/virtio_nn.ko ]] ||
    die "plain kernel or guest-driver/virtio_nn.ko missing: scripts/build.sh"
if ((build_debug)) && [[ $mode != bench ]]; then
    "$REPO/scripts/build-kernel.sh" --variant debug >/dev/null
    if [[ ! -f $MODULE_DIR_DEBUG/virtio_nn.ko || $MODULE_DIR_DEBUG/virtio_nn.ko -ot $KERNEL_IMAGE_DEBUG ]] ||
        [[ -n "$(find "$REPO/guest-driver" "$REPO"/nn-core/src/*.rs -newer "$MODULE_DIR_DEBUG/virtio_nn.ko" \
                 \( -name '*.rs' -o -name '*.c' -o -name '*.h' -o -name Kbuild \) -print -quit)" ]]; then
        "$REPO/scripts/build-debug-module.sh" >/dev/null
    fi
fi

# every cell runs these (bench: bench_nn.py alone)
E2E_TESTS="$REPO/tests/avocado/test_nn.py $REPO/tests/avocado/test_supervisor.py"
case "$mode" in
    full)  mux="$REPO/tests/avocado/matrix.yaml"; tests="${tests:-$E2E_TESTS}" ;;
    smoke) mux="$REPO/tests/avocado/smoke.yaml"; tests="${tests:-$E2E_TESTS}" ;;
    bench) mux=""; tests="${tests:-$REPO/tests/avocado/bench_nn.py}" ;;
esac

mkdir -p "$results"
# one guest at a time unless --parallel: the machines are small and shared
args=(run --max-parallel-tasks "$parallel" --job-results-dir "$results" --disable-sysinfo)
# shellcheck disable=SC2206 # several test references may be given
args+=($tests)
[[ -n $mux ]] && args+=(-m "$mux")
((${#filters[@]})) && args+=(--mux-filter-only "${filters[@]}")
log "avocado ${args[*]}"
before="$(readlink -f "$results/latest" 2>/dev/null || true)"
rc=0
(cd "$REPO" && "$AVOCADO" "${args[@]}") || rc=$?
job="$(readlink -f "$results/latest" 2>/dev/null || true)"
[[ -n $job && $job != "$before" && -f $job/results.json ]] || die "avocado did not run a job (rc $rc)"
"$PY" "$REPO/tests/avocado/report.py" "$job" | tee "$job/matrix-table.md"
log "job: $job (HTML report: $job/results.html)"
exit $rc
