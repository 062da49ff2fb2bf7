#!/usr/bin/env bash
# The one GPU call of a session (see /work/shared/DEVICE.md and README "Performance"): install the
# working tree without dependencies and without the network (the device has none; its torch / triton /
# torchvision are used as they are; DALI and FFCV are used only if already importable), then every GPU
# measurement in order, headline first, under a 480 s budget (the rest of the 600 s call is the
# install and the transfer back), results into $OUT (<= 8 files of <= 16 MiB). Run it through the
# device tool as
#     bash benchmarks/gpu_oneshot.sh            (timeout_s 600)
# and copy $OUT's JSON / PNG files into benchmarks/results/ afterwards. Every part rewrites its JSON
# as it measures, so a part stopped for time still leaves what it measured.
set -euo pipefail
OUT="${OUT:-${1:-/tmp/fasttrain_gpu_out}}"
BUDGET="${BUDGET_S:-480}"
# An editable install needs the device's setuptools; where that fails, the tree on PYTHONPATH serves
# the same purpose (every part runs as `python -m ...`), so the call is not lost to packaging.
if ! python3 -m pip install -q --no-deps --no-build-isolation --no-index --disable-pip-version-check -e . \
    >/tmp/fasttrain_pip.log 2>&1; then
  echo "pip install -e . failed (tail below); running from PYTHONPATH=$PWD" >&2
  tail -5 /tmp/fasttrain_pip.log >&2
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -m fasttrain.cli bench gpu --out "$OUT" --budget-s "$BUDGET"
