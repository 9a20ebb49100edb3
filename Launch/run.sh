#!/usr/bin/env bash
# Sets up kat-dist (Debian packages, release build) and runs the built-in default training
# run under mpirun: RL on the code task, with a short supervised warm start, evaluated on
# held-out prompts, with one trainer rank and one rollout rank. Extra arguments go to
# `kat-dist train`.
#
#   bash Launch/run.sh                                   # this machine, 2 ranks
#   KAT_RANKS=4 bash Launch/run.sh --set ranks.trainers=2
#   KAT_HOSTFILE=Launch/hostfile.example KAT_RANKS=8 bash Launch/run.sh --run-dir /shared/runs/a
#
# Ranks x threads use the cores: each rank gets KAT_THREADS cores (default: the physical
# cores of this machine divided by the ranks on it) and as many OpenBLAS threads, bound with
# `--map-by slot:PE=KAT_THREADS`; more ranks than cores run unbound, one thread each.
# KAT_REPORT_BINDINGS=1 makes mpirun print where each rank runs. See Docs/cluster.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash Launch/setup.sh
ROOT_FLAGS=()
[ "$(id -u)" -eq 0 ] && ROOT_FLAGS=(--allow-run-as-root)
NP="${KAT_RANKS:-2}"   # one trainer and one rollout rank

# Physical cores (hardware threads of one core share its floating-point units).
CORES=$(lscpu -b -p=Core,Socket 2>/dev/null | grep -v '^#' | sort -u | wc -l)
[ "$CORES" -gt 0 ] || CORES=$(nproc)
HOSTS=()
PER_NODE="$NP"
if [ -n "${KAT_HOSTFILE:-}" ]; then
    HOSTS=(--hostfile "$KAT_HOSTFILE")
    # Ranks per node: the slots of the hostfile's first node (nodes alike, as on most clusters).
    PER_NODE=$(grep -v '^\s*#' "$KAT_HOSTFILE" | grep -m1 -o 'slots=[0-9]*' | cut -d= -f2 || true)
    PER_NODE="${PER_NODE:-1}"
fi
if [ "$PER_NODE" -le "$CORES" ]; then
    THREADS="${KAT_THREADS:-$(( CORES / PER_NODE ))}"
    BIND=(--map-by "slot:PE=$THREADS")
else
    THREADS=1
    BIND=(--oversubscribe --bind-to none)
fi
REPORT=()
[ "${KAT_REPORT_BINDINGS:-0}" = 1 ] && REPORT=(--report-bindings)

# The command line and config are checked in one process first: a mistake is one line and
# exit code 2 before mpirun starts.
.build/release/kat-dist train --check --ranks "$NP" "$@" >/dev/null

exec mpirun "${ROOT_FLAGS[@]}" "${HOSTS[@]}" "${BIND[@]}" "${REPORT[@]}" --mca mpi_yield_when_idle 1 -np "$NP" \
    -x OPENBLAS_NUM_THREADS="$THREADS" \
    "$PWD/.build/release/kat-dist" train "$@"
