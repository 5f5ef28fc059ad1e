#!/usr/bin/env bash
# Submit generate -> build -> train -> export -> eval as a chain of Slurm jobs and print their ids. Run it (do not sbatch
# it) on a login node, from the repository root or anywhere (run_dir and other relative paths are relative to here):
#   slurm/pipeline.sh configs/mistral-7b.yaml [key=value ...]
# Every job starts only after the one before it succeeded (--dependency=afterok); a stage that fails makes Slurm cancel
# every job after it (--kill-on-invalid-dep=yes), so nothing runs on half an input. The jobs are slurm/generate.sbatch,
# slurm/stage.sbatch build, slurm/train.sbatch, slurm/stage.sbatch export and slurm/eval.sbatch with their own #SBATCH
# defaults; each gets the same CONFIG and overrides. Stages whose output the run folder already holds complete are
# not submitted (the test `cst pipeline` uses), so the same command continues a pipeline that stopped part-way.
# Settings (environment):
#   CST_STAGES="generate build train export eval"   the stages to consider, in this order
#   CST_SBATCH_ARGS="--partition=gpu --account=x"   extra sbatch options for every job
#   CST_SBATCH_ARGS_<STAGE>="--nodes=8"             extra options for one stage (GENERATE, BUILD, TRAIN, EXPORT, EVAL)
#   CST_LOG_DIR=logs                                 where the jobs' logs go
# Output: one line per submitted job, "<stage> <job id>"; the last line's job is the pipeline's end (wait for it with
# e.g. `srun --dependency=afterany:<id> true`, or watch `squeue --me`). If an sbatch call fails, the jobs already
# submitted are cancelled and the script exits non-zero.
set -euo pipefail
CST_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CST_REPO
source "$CST_REPO/slurm/_common.sh"
[[ $# -ge 1 ]] || die "usage: slurm/pipeline.sh CONFIG [key=value ...]" 2
require_slurm
mkdir -p "$CST_LOG_DIR"

declare -A SCRIPT=([generate]=generate.sbatch [build]="stage.sbatch build" [train]=train.sbatch
                   [export]="stage.sbatch export" [eval]=eval.sbatch)
SUBMITTED=()
cancel_submitted() {
  (( ${#SUBMITTED[@]} )) || return 0
  log "cancelling the jobs already submitted: ${SUBMITTED[*]}"
  scancel "${SUBMITTED[@]}" 2>/dev/null || true
}

read -r -a STAGES <<<"${CST_STAGES:-generate build train export eval}"
for stage in "${STAGES[@]}"; do
  [[ -n "${SCRIPT[$stage]:-}" ]] || die "CST_STAGES: unknown stage '$stage' (generate build train export eval)" 2
done
# Checks the config too: a bad key fails here, before anything is submitted.
STAGES_CSV=$(IFS=,; echo "${STAGES[*]}")
read -r -a COMPLETE <<<"$(config_query "$@" -- "complete:$STAGES_CSV")"

previous=
for index in "${!STAGES[@]}"; do
  stage=${STAGES[$index]}
  # Complete stages before the first one submitted are skipped; every stage after that runs (its input is new).
  if [[ -z "$previous" && "${COMPLETE[$index]}" == true ]]; then
    log "$stage: complete in the run folder, not submitted"
    continue
  fi
  read -r -a script <<<"${SCRIPT[$stage]}"
  upper=${stage^^}
  extra_var=CST_SBATCH_ARGS_$upper
  # word splitting of the two option strings is intended
  # shellcheck disable=SC2206
  options=(--parsable --kill-on-invalid-dep=yes --job-name="cst-$stage" --output="$CST_LOG_DIR/%x-%j.out"
           ${CST_SBATCH_ARGS:-} ${!extra_var:-})
  [[ -n "$previous" ]] && options+=(--dependency="afterok:$previous")
  if ! job=$(sbatch "${options[@]}" "$CST_REPO/slurm/${script[0]}" "${script[@]:1}" "$@"); then
    cancel_submitted
    die "sbatch of the $stage stage failed"
  fi
  job=${job%%;*}  # --parsable prints "id" or "id;cluster"
  SUBMITTED+=("$job")
  previous=$job
  echo "$stage $job"
done
[[ -n "$previous" ]] || log "every stage is complete in the run folder: nothing submitted"
