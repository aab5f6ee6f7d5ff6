#!/usr/bin/env bash
# Train several recipes at once on one GPU inside a time box, then package what comes back.
#
#   scripts/gpu_train.sh PACK OUT MINUTES RECIPE[@SEED][+KEY=VALUE...] [...]
#
# PACK: a file from `ferkit data pack DATA --splits Training,PublicTest` (the test split
# never travels; a FER+ recipe finds fer2013new.csv, or fer2013new.csv.gz, beside the pack).
# Each recipe trains in its own process with --max-minutes MINUTES and a schedule fitted to
# that time; runs share the GPU (at small batches one run is bound by launching kernels and
# leaves most of the GPU idle). For each recipe OUT gets RECIPE.tar.gz (best weights in
# fp16, metadata, metrics log, summary, train.log). BENCH=1 first runs the training-speed
# benchmark alone on the GPU (OUT/bench.txt). EXTRA adds --set overrides to every run.
# RECIPE@SEED trains the recipe with that seed as run RECIPE-sSEED (e.g. paper@1 paper@2 for
# the seeds table); +KEY=VALUE sets a recipe key for that run only, and names the recipe
# after it (paper+cuda_graph=true is recipe and run paper-cuda_graph-true, and
# paper@2+cuda_graph=true run paper-cuda_graph-true-s2). Values must not contain "+".
# OUT is kept small, for GPU machines whose results come back through a size-limited copy
# (the limits checked, MAX_FILES=8 files of MAX_FILE_MB=16 MiB and MAX_OUT_MB=64 MiB in all,
# are variables: set them to yours): an archive over MAX_FILE_MB - 1 MiB is split into
# NAME.tar.gz.partNN (join with cat), and the script warns when OUT holds more than that. fp16 weights: mba_cnn 7.5 MB, resnet18 22 MB, mba_cnn_conv 48 MB.
#
# Run it from the root of a checkout (it puts ./src first on PYTHONPATH, runs
# benchmarks/train_speed.py; a recipes/NAME.yaml there comes before the recipe NAME that
# ferkit ships). MINUTES is a positive number (e.g. 30 or 0.5). --help prints the usage;
# fewer than 4 arguments or a MINUTES that is not a positive number print it and exit with
# status 2. The exit status is 1 when a run failed.
#
# Environment variables:
#   EXTRA          --set overrides for every run, e.g. EXTRA="--set batch_size=256"
#   BENCH=1        first run the training-speed benchmark alone (OUT/bench.txt), with
#   BENCH_TIMEOUT  its time limit in seconds (default 150),
#   BENCH_BATCHES  its --batch-sizes (default "64 128"),
#   BENCH_SECONDS  its --seconds per row (default 4) and
#   BENCH_FLAGS    more of its options (e.g. "--cuda-graph")
#   KEEP_RUNS=1    keep the run folders OUT/runs/NAME; otherwise OUT/runs is deleted once the
#                  archives are written (OUT then holds the archives, bench.txt, gpu_util.csv)
# nvidia-smi, when there is one, logs the GPU's use every 10 s to OUT/gpu_util.csv until the
# runs end.
#
# CPU dry run (no GPU needed; tests/test_train.py::test_gpu_script_dry_run does this): from a
# folder holding src (the checkout's) and optionally recipes/, with a tiny pack and tiny
# model overrides, e.g.
#   EXTRA="--set model=resnet18 model_options={depths:[1],widths:[8]} epochs=1 batch_size=16" \
#   OMP_NUM_THREADS=1 bash scripts/gpu_train.sh tiny.pack out 0.05 cpu cpu@3
# trains each recipe for one epoch on the CPU and writes out/cpu.tar.gz, out/cpu-s3.tar.gz.
set -u
usage() {
  echo "usage: scripts/gpu_train.sh PACK OUT MINUTES RECIPE[@SEED][+KEY=VALUE...] [...]"
  echo "(see the comment at the top of this script: arguments, environment variables)"
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac
if [ $# -lt 4 ]; then
  { usage; echo "error: expected PACK, OUT, MINUTES and at least one RECIPE; got $# argument(s)"; } >&2
  exit 2
fi
PACK=$1; OUT=$2; MINUTES=$3; shift 3
MAX_FILES=${MAX_FILES:-8}; MAX_FILE_MB=${MAX_FILE_MB:-16}; MAX_OUT_MB=${MAX_OUT_MB:-64}
if ! [[ $MINUTES =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ && $MINUTES =~ [1-9] ]]; then
  { usage; echo "error: MINUTES must be a positive number (e.g. 30 or 0.5), not '$MINUTES'"; } >&2
  exit 2
fi
if [ ! -e "$PACK" ]; then
  echo "error: PACK $PACK: no such file or folder" >&2
  exit 2
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT/runs"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
if [ "${BENCH:-0}" = 1 ]; then
  timeout "${BENCH_TIMEOUT:-150}" python benchmarks/train_speed.py --models mba_cnn \
    --batch-sizes ${BENCH_BATCHES:-64 128} --seconds "${BENCH_SECONDS:-4}" --profile ${BENCH_FLAGS:-} \
    > "$OUT/bench.txt" 2>&1 || echo "benchmark failed or timed out (see bench.txt)"
  tail -8 "$OUT/bench.txt"
fi
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 10 > "$OUT/gpu_util.csv" 2>&1 &
  smi=$!
  trap 'kill "$smi" 2>/dev/null' EXIT  # the logger never outlives the script
fi
names=(); pids=()
for spec in "$@"; do
  base=${spec%%+*}; sets=()
  if [ "$base" != "$spec" ]; then IFS=+ read -ra sets <<< "${spec#*+}"; fi
  recipe=${base%@*}; variant=$recipe
  for kv in "${sets[@]}"; do variant="$variant-${kv//[^A-Za-z0-9._-]/-}"; done
  # a variant is a recipe of its own name (the seeds table groups runs by recipe name)
  [ "$variant" != "$recipe" ] && sets+=("name=$variant")
  name=$variant
  if [ "$base" != "$recipe" ]; then name="$variant-s${base#*@}"; sets+=("seed=${base#*@}"); fi
  names+=("$name")
  # the run's own keys come last: they win over EXTRA's
  # a recipe of the checkout's recipes/ folder (one of your own), else one ferkit ships
  file=$recipe; [ -f "recipes/$recipe.yaml" ] && file="recipes/$recipe.yaml"
  python -m ferkit train --recipe "$file" --data "$PACK" --out "$OUT/runs/$name" \
    --max-minutes "$MINUTES" --set time_budget_minutes="$MINUTES" ${EXTRA:-} \
    ${sets[@]:+--set "${sets[@]}"} > "$OUT/$name.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"  # the training runs only, never the nvidia-smi logger
[ -n "${smi:-}" ] && kill "$smi" 2>/dev/null
status=0
for recipe in "${names[@]}"; do
  run="$OUT/runs/$recipe"
  mkdir -p "$run"
  mv "$OUT/$recipe.log" "$run/train.log"
  if [ -f "$run/summary.json" ]; then
    python - "$run" <<'PY'
import sys
from pathlib import Path
import torch
from ferkit.checkpoint import load_checkpoint, save_checkpoint
run = Path(sys.argv[1])
model, meta = load_checkpoint(run / "best")
save_checkpoint(model, run / "best-fp16", meta, dtype=torch.float16)
PY
    echo "RESULT $recipe $(python -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"best_val_acc={s['best_val_acc']:.4f} epochs={s['epochs_done']}/{s['epochs_planned']} wall={s['wall_seconds']:.0f}s stop={s['stop_reason']}\")" "$run/summary.json")"
  else
    echo "RESULT $recipe FAILED"; tail -n 5 "$run/train.log"; status=1
  fi
  files=$(cd "$run" && ls best-fp16.safetensors best-fp16.json last.json metrics.jsonl summary.json recipe.json train.log 2>/dev/null)
  archive="$OUT/$recipe.tar.gz"
  tar -czf "$archive" -C "$run" $files
  if [ "$(stat -c %s "$archive")" -gt $(((MAX_FILE_MB - 1) * 1024 * 1024)) ]; then
    split -b "$((MAX_FILE_MB - 1))M" -d "$archive" "$archive.part" && rm -f "$archive"
  fi
done
[ "${KEEP_RUNS:-0}" = 1 ] || rm -rf "$OUT/runs"
count=$(find "$OUT" -type f | wc -l); bytes=$(du -sb "$OUT" | cut -f1)
if [ "$count" -gt "$MAX_FILES" ] || [ "$bytes" -gt $((MAX_OUT_MB * 1024 * 1024)) ]; then
  echo "WARNING: OUT holds $count files, $bytes bytes: more than $MAX_FILES files or $MAX_OUT_MB MiB"
fi
exit $status
