#!/usr/bin/env bash
# Fit one instruction per exemplar set on a SLURM cluster: each array task is an independent worker that
# takes its own shard of SETS, so no task waits for or talks to another.
#   sbatch examples/slurm_fit_batch.sh SETS OUT [extra invert fit-batch flags...]
#   e.g. sbatch --array=0-7 examples/slurm_fit_batch.sh sets/ insts/ --method brush --steps 500
# Resubmitting the same command (or a requeued task) continues: sets whose OUT/NAME.inst exists are skipped,
# and an .inst is written atomically, so a killed task never leaves a half-written one behind.
#SBATCH --job-name=invert-fit-batch
#SBATCH --array=0-3
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --mem=32G
#SBATCH --time=12:00:00
#SBATCH --output=invert-fit-batch-%A_%a.log
#SBATCH --requeue
set -euo pipefail
usage="usage: sbatch [--array=0-N] slurm_fit_batch.sh SETS OUT [invert fit-batch flags...]"
sets=${1:?$usage}
out=${2:?$usage}
shift 2
: "${SLURM_ARRAY_TASK_ID:?not an array task: submit with sbatch --array (see the top of this script)}"

# fit-batch wants shards 0..N-1, while an array may start elsewhere or step (--array=1-8, --array=0-14:2).
# An array given as a list (--array=1,5,9) has no such numbering: use a range.
n=${SLURM_ARRAY_TASK_COUNT}
k=$(( (SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0}) / ${SLURM_ARRAY_TASK_STEP:-1} ))

# Compute nodes often have no network: download the weights once to a shared HF_HOME from a login node
# (see the README), and let every task read them from there instead of trying the hub.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
# torch would otherwise start one thread per core of the node, not per core this task was given.
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-4}"

# SLURM shows this task only its own GPU (CUDA_VISIBLE_DEVICES), so "cuda" is that one; "cuda" rather than
# auto so that a task given no GPU fails at once instead of fitting for days on the CPU.  A --device in the
# extra flags comes later and wins.
exec "${INVERT:-invert}" fit-batch "$sets" -o "$out" --shard "$k/$n" --device cuda "$@"
