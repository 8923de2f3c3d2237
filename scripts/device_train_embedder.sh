#!/usr/bin/env bash
# Issue 18's GPU measurement in one run on a lent GPU machine (a few minutes of its time):
# `cellfeat train-embedder` on a synthetic set, its crops/s on the GPU in bfloat16 ("auto") and
# in float32, with the same held-out scores as on the CPU.
#
# Here, first:   bash ../shared/tools/device-bundle.sh      (wheels into .device/)
# Then the device tool's run, with carry [".device"] and timeout_s 420:
#   bash scripts/device_train_embedder.sh
# Everything lands in $OUT: each run's config.json (history: loss, crops/s, held-out top-1 per
# epoch), its log, nvidia-smi samples every second (smi.csv) and summary.txt.
# Locally (no GPU), SMOKE=1 runs the same steps tiny and on the CPU, to check the script itself.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
if [ "${SMOKE:-0}" = 1 ]; then
  PY=${PY:-.venv/bin/python} DEVICE=cpu TREAT=2 SIZE=128 EPOCHS=1 JOBS=2 T=300
else
  # shellcheck disable=SC1091
  source .device/setup.sh || { echo "setup failed: run ../shared/tools/device-bundle.sh here first"; exit 1; }
  PY=python3 DEVICE=cuda TREAT=12 SIZE=256 EPOCHS=4 JOBS=15 T=150
fi
SMI=
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 1 > "$OUT/smi.csv" 2>&1 &
  SMI=$!
fi
mark() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$OUT/steps.txt"; }
DATA=$(mktemp -d)/data
mark "synth"
"$PY" -m pipelines.cli synth --out "$DATA" --train-experiments HUVEC-01,HUVEC-02,HEPG2-01,RPE-01 --test-experiments '' \
  --treatments-per-plate "$TREAT" --positive-controls 4 --sites 1 --image-size "$SIZE" --jobs "$JOBS" > "$OUT/synth.log" 2>&1
for precision in auto fp32; do
  printf '[train_embedder]\nprecision = "%s"\n' "$precision" > "$OUT/train_$precision.toml"
  mark "start train-embedder precision=$precision"
  timeout "$T" "$PY" -m pipelines.cli train-embedder --data-root "$DATA" --metadata "$DATA" \
    --experiments HUVEC-01,HEPG2-01,RPE-01 --validate-experiments HUVEC-02 --config "$OUT/train_$precision.toml" \
    --out "$OUT/emb_$precision" --epochs "$EPOCHS" --patience 0 --device "$DEVICE" --jobs "$JOBS" \
    --segmenter classical > "$OUT/train_$precision.log" 2>&1
  mark "end train-embedder precision=$precision rc=$?"
  rm -rf "$OUT/emb_$precision/crops" "$OUT/emb_$precision/checkpoint.pth" "$OUT/emb_$precision/weights.pth"
done
[ -n "$SMI" ] && kill "$SMI"
{
  cat "$OUT/steps.txt"
  for precision in auto fp32; do
    echo "== precision $precision"
    grep -E "epoch|training on|error|Error" "$OUT/train_$precision.log" | cut -c1-220
  done
} > "$OUT/summary.txt"
cat "$OUT/summary.txt"
