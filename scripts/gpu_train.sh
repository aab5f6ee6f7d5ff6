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
# A device call returns at most 8 files of at most 16 MiB, 64 MiB in all: an archive over
# 15 MiB is split into NAME.tar.gz.partNN (join with cat), and the script warns when OUT
# holds more than that. fp16 weights: mba_cnn 7.5 MB, resnet18 22 MB, mba_cnn_conv 48 MB.
set -u
PACK=$1; OUT=$2; MINUTES=$3; shift 3
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
fi
names=()
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
done
wait $(jobs -p | grep -v "^${smi:-none}$")
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
  if [ "$(stat -c %s "$archive")" -gt $((15 * 1024 * 1024)) ]; then
    split -b 15M -d "$archive" "$archive.part" && rm -f "$archive"
  fi
done
[ "${KEEP_RUNS:-0}" = 1 ] || rm -rf "$OUT/runs"
count=$(find "$OUT" -type f | wc -l); bytes=$(du -sb "$OUT" | cut -f1)
if [ "$count" -gt 8 ] || [ "$bytes" -gt $((64 * 1024 * 1024)) ]; then
  echo "WARNING: OUT holds $count files, $bytes bytes: more than a device call brings back"
fi
exit $status
