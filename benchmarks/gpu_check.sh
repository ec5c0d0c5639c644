#!/usr/bin/env bash
# One prepared GPU check (benchmarks/gpu_check.py): device and driver, pytest -m gpu, ResNet-50 2D img/s
# against torchvision's, the full-resolution 3D dual head's samples/s per fast path, the loader's rate,
# shortened end-to-end runs of ct_chest.yaml and ct_chest_fullres.yaml. Writes gpu_check.json and
# gpu_check.md (the table for BENCHMARKS.md) under --out after every stage.
#
#   bash benchmarks/gpu_check.sh --out gpu_out            # on the GPU machine (under 8 minutes)
#   bash benchmarks/gpu_check.sh --out /tmp/x --dry-run   # the same stages on the CPU at tiny sizes
#
# GPU_CHECK_LIMIT_S (default 470) caps the whole run; stages finished by then are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if [[ -x .venv/bin/python && -z "${PYTHON:-}" ]]; then PY=.venv/bin/python; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout --signal=TERM --kill-after=15 "${GPU_CHECK_LIMIT_S:-470}" "$PY" benchmarks/gpu_check.py "$@"
