#!/usr/bin/env bash
# Issue 25's GPU measurements in one run on a lent GPU machine (about 6 minutes of its time).
#
# Here, first:   bash ../shared/tools/device-bundle.sh      (wheels + real RxRx1 sites into .device/)
# Then the device tool's run, with carry [".device"] and timeout_s 540:
#   bash scripts/device_extract.sh
# Everything lands in $OUT: the benchmarks' JSON and logs, nvidia-smi samples every second
# (smi.csv: GPU utilization and memory while each step ran), and summary.txt.
#
# Steps (each under its own timeout, so one stuck step leaves the others' numbers):
# 1. scripts/bench_extract.py: HUVEC and HEPG2, one plate of 154 wells x 2 sites each (308 sites),
#    classical segmentation, EfficientNet-Lite0 embeddings on the GPU, --jobs 15 (extract's own
#    "where the time went" line gives the device stage's busy fraction); the goals are HUVEC
#    >= 20 sites/s, HEPG2 >= 10 sites/s, main process < 2 GB;
# 2. scripts/bench_segmentation.py --cellpose-only: the Cellpose 3 adapter (nuclei + cyto3
#    architecture, random weights: no weights can be downloaded there) on 64 real sites (the 14,
#    cycled) in one batch on the GPU, its networks in bfloat16 ("auto") and in float32; goal >= 20 sites/s. Random weights find no objects, so the
#    mask step (cellpose's dynamics) is cheaper than with real weights: an upper bound.
# Locally (no GPU), SMOKE=1 runs the same steps tiny and on the CPU, to check the script itself.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
if [ "${SMOKE:-0}" = 1 ]; then
  PY=${PY:-.venv/bin/python} WELLS=2 JOBS=2 CP_SITES=2 CP_DEVICE=cpu T1=600 T2=300
else
  # shellcheck disable=SC1091
  source .device/setup.sh || { echo "setup failed: run ../shared/tools/device-bundle.sh here first"; exit 1; }
  PY=python3 WELLS=154 JOBS=15 CP_SITES=64 CP_DEVICE=cuda T1=330 T2=150
fi
export OMP_NUM_THREADS=1
SMI=
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 1 > "$OUT/smi.csv" 2>&1 &
  SMI=$!
fi
mark() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$OUT/steps.txt"; }

mark "start extract HUVEC,HEPG2 wells=$WELLS jobs=$JOBS"
timeout "$T1" "$PY" scripts/bench_extract.py --cell-types HUVEC,HEPG2 --wells "$WELLS" --jobs "$JOBS" --no-serial \
  --scale-plates 1 --stage-sites 0 --family-sites 0 --merge-parts 0 --json "$OUT/extract.json" > "$OUT/extract.log" 2>&1
mark "end extract rc=$?"

mark "start cellpose sites=$CP_SITES device=$CP_DEVICE"
OMP_NUM_THREADS=4 timeout "$T2" "$PY" scripts/bench_segmentation.py --cellpose-only --cellpose-sites "$CP_SITES" \
  --cellpose-device "$CP_DEVICE" --cellpose-precision auto,fp32 --json "$OUT/cellpose.json" --out /tmp/seg-bench > "$OUT/cellpose.log" 2>&1
mark "end cellpose rc=$?"

[ -n "$SMI" ] && kill "$SMI"
{
  cat "$OUT/steps.txt"
  grep -h -E "^  (warm-up |HUVEC-|HEPG2-)|where the time went" "$OUT/extract.log"
  grep -h "cellpose (random\|Error" "$OUT/cellpose.log"
  if [ -s "$OUT/smi.csv" ]; then
    echo "nvidia-smi samples (1 s): $(wc -l < "$OUT/smi.csv"), mean GPU utilization $(awk -F', ' \
      '{gsub(/ %/, "", $2); s += $2; n++} END {if (n) printf "%.0f%%", s / n}' "$OUT/smi.csv")"
  fi
} > "$OUT/summary.txt"
cat "$OUT/summary.txt"
