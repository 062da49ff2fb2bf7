#!/usr/bin/env bash
# The one GPU call of a session (see /work/shared/DEVICE.md and README "Performance"): install the
# working tree without dependencies (the machine's torch / triton / torchvision are used as they
# are; DALI and FFCV are used only if already importable), then every GPU measurement in order under
# a 540 s budget, results into $OUT (<= 8 files of <= 16 MiB). Run it through the device tool as
#     bash benchmarks/gpu_oneshot.sh            (timeout_s 600)
# and copy $OUT's JSON / PNG files into benchmarks/results/ afterwards.
set -euo pipefail
OUT="${OUT:-${1:-/tmp/fasttrain_gpu_out}}"
BUDGET="${BUDGET_S:-540}"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
python3 -m fasttrain.cli bench gpu --out "$OUT" --budget-s "$BUDGET"
