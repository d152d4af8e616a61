#!/usr/bin/env bash
# Every GPU measurement of normlab in one call (benchmarks/gpu.py), for a CUDA machine whose python3 has torch,
# numpy, matplotlib and tqdm. Results: $OUT/gpu.json (or gpu-results/gpu.json), plus nvidia-smi's view.
#   bash benchmarks/gpu.sh [--data-dir DIR] [--skip check small study mps]
set -u
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# Bytecode where it can be written: a read-only site-packages would otherwise be compiled again by every process.
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-/tmp/normlab-pycache}
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
python3 benchmarks/gpu.py --out "$out" "$@"
