#!/usr/bin/env bash
# Slurm batch script for kat-dist: trains under mpirun on the job's allocation (one rank
# per task, SLURM_CPUS_PER_TASK cores and OpenBLAS threads per rank), asks Slurm for SIGUSR1
# two minutes before the time limit (kat-dist then finishes its step, writes a checkpoint
# and exits 0), and then requeues the job by its id, which continues with --resume auto
# until the run is done.
#
#   sbatch Launch/slurm.sh                                  # the default run, RUN=runs/slurm
#   RUN=/shared/runs/exp1 sbatch Launch/slurm.sh --set steps=2000
#
# The run directory, model.init, the data file and the environment command must be on
# storage every node shares (Docs/cluster.md says how to check).
#
#SBATCH --job-name=kat-dist
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=4
#SBATCH --time=01:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=kat-dist-%j.log
set -uo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
KAT_DIST="${KAT_DIST:-$PWD/.build/release/kat-dist}"
RUN="${RUN:-runs/slurm}"
export RUN
THREADS="${SLURM_CPUS_PER_TASK:-1}"
RANKS="${SLURM_NTASKS:-1}"
RESUME=()
[ -e "$RUN/checkpoints/latest" ] && RESUME=(--resume auto)

# A mistake in the command line or config is one line and exit code 2, before mpirun.
"$KAT_DIST" train --check --ranks "$RANKS" --run-dir "$RUN" "${RESUME[@]}" "$@" >/dev/null || exit $?

# --signal=B: sends SIGUSR1 to this batch shell; pass it on to every rank.
PREEMPTED=0
forward() {
    PREEMPTED=1
    echo "kat-dist slurm: job ${SLURM_JOB_ID:-?}: time limit near, asking the ranks to checkpoint" >&2
    kill -USR1 "$CHILD" 2>/dev/null
}
trap forward USR1

# mpirun takes the hosts and the number of ranks from the allocation; -np repeats it so the
# script also runs outside Slurm. Each rank is bound to THREADS cores.
mpirun --map-by "slot:PE=$THREADS" -np "$RANKS" -x OPENBLAS_NUM_THREADS="$THREADS" --mca mpi_yield_when_idle 1 \
    "$KAT_DIST" train --run-dir "$RUN" "${RESUME[@]}" "$@" &
CHILD=$!
wait "$CHILD"; rc=$?
# `wait` returns early when the trap fires; wait again for the ranks to finish the checkpoint.
while kill -0 "$CHILD" 2>/dev/null; do wait "$CHILD"; rc=$?; done

if [ "$PREEMPTED" = 1 ] && [ "$rc" -eq 0 ]; then
    step=$(cat "$RUN/checkpoints/latest" 2>/dev/null || echo "?")
    echo "kat-dist slurm: job ${SLURM_JOB_ID:-?} stopped at checkpoint $step for the time limit; requeueing it" >&2
    # The same job again (same id, same log, appended); where requeueing is not allowed,
    # a new job with the same arguments.
    scontrol requeue "${SLURM_JOB_ID:-}" || sbatch "$0" "$@"
fi
exit "$rc"
