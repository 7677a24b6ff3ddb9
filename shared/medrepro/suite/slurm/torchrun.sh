# shellcheck shell=bash
# The body of every experiments/<exp>/slurm/train.sbatch that trains with torchrun: one SLURM task per
# node, each starting torchrun with NPROC_PER_NODE processes. The batch script sets, then sources this:
#   TRAIN        the medrepro arguments of the training command, options only, run directory included
#   OVERRIDES    key=value overrides that the command always gets (an array, may be empty)
#   CHECKPOINTS  a glob of the run's step checkpoints: when one matches, the job continues from the last
#                (`--resume latest`), so a requeued or resubmitted job resumes instead of starting over
# Environment, all optional:
#   PROFILE         the experiment's profile (default full)
#   NPROC_PER_NODE  processes per node (default: the GPUs SLURM gave the node, else 1 for the CPU)
#   MASTER_PORT     the rendezvous port on the first node (default 29800 + job id % 100)
# The batch script's own arguments ("$@", key=value overrides) go last, so they win.

if [ -z "${SLURM_JOB_ID:-}" ]; then
  echo "torchrun.sh: not inside a SLURM job; submit experiments/<exp>/slurm/train.sbatch with sbatch" >&2
  exit 2
fi
PROFILE=${PROFILE:-full}
NPROC_PER_NODE=${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
MASTER_PORT=${MASTER_PORT:-$((29800 + SLURM_JOB_ID % 100))}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# The address SLURM itself uses for the node: on a cluster its network address, on one host 127.0.0.1.
HEAD_ADDR=$(scontrol show node "$HEAD" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p')
RESUME=()
start="from the start"
if compgen -G "$CHECKPOINTS" > /dev/null; then RESUME=(--resume latest) start="from the last checkpoint"; fi
echo "slurm: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_NNODES node(s) ×" \
  "$NPROC_PER_NODE process(es), rendezvous $HEAD_ADDR:$MASTER_PORT, profile $PROFILE, $start" >&2

srun --kill-on-bad-exit=1 --ntasks-per-node=1 torchrun \
  --nnodes "$SLURM_NNODES" --nproc_per_node "$NPROC_PER_NODE" --max-restarts 0 \
  --rdzv_backend c10d --rdzv_endpoint "$HEAD_ADDR:$MASTER_PORT" --rdzv_id "$SLURM_JOB_ID" \
  -m medrepro "${TRAIN[@]}" --profile "$PROFILE" "${RESUME[@]}" "${OVERRIDES[@]}" "$@"
