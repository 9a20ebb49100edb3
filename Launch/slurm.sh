#!/usr/bin/env bash
# Slurm batch script for kat-dist: runs training under srun/mpirun, asks Slurm for SIGUSR1
# two minutes before the time limit (kat-dist then finishes its step, writes a checkpoint
# and exits 0), and resubmits itself to continue with --resume auto until the run is done.
#
#   sbatch Launch/slurm.sh                      # the default run, RUN=runs/slurm
#   RUN=runs/exp1 sbatch Launch/slurm.sh --set steps=2000
#
#SBATCH --job-name=kat-dist
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --time=01:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --output=kat-dist-%j.log
set -uo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
RUN="${RUN:-runs/slurm}"
export RUN
RESUME=()
[ -e "$RUN/checkpoints/latest" ] && RESUME=(--resume auto)

# --signal=B: sends SIGUSR1 to this batch shell; pass it on to every rank.
forward() { echo "kat-dist slurm: time limit near, asking ranks to checkpoint"; kill -USR1 "$CHILD" 2>/dev/null; }
trap forward USR1

mpirun -x OPENBLAS_NUM_THREADS=1 --mca mpi_yield_when_idle 1 \
    .build/release/kat-dist train --run-dir "$RUN" "${RESUME[@]}" "$@" &
CHILD=$!
wait "$CHILD"; rc=$?
# `wait` returns early when the trap fires; wait again for the ranks to finish the checkpoint.
while kill -0 "$CHILD" 2>/dev/null; do wait "$CHILD"; rc=$?; done

steps_done=$(tail -n 1 "$RUN/metrics.jsonl" 2>/dev/null | python3 -c 'import json,sys; print(json.loads(sys.stdin.read() or "{}").get("step", 0))' 2>/dev/null || echo 0)
if [ "$rc" -eq 0 ] && grep -q "stopping after step" "kat-dist-${SLURM_JOB_ID:-x}.log" 2>/dev/null; then
    echo "kat-dist slurm: stopped at step $steps_done for the time limit; resubmitting"
    RUN="$RUN" sbatch "$0" "$@"
fi
exit "$rc"
