#!/usr/bin/env bash
# One command for a machine with a GPU where torch, tokenizers, safetensors, tqdm and matplotlib
# are installed and nothing can be downloaded: data -> guppy-9m trained for SECONDS -> guppy eval,
# timed stage by stage, from this checkout (no pip). Under 8 minutes with the default 60 s.
#
#   bash benchmarks/bench_gpu.sh [SECONDS] [more flags of benchmarks/bench_gpu.py]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python_bin="$(command -v python3 || command -v python)"
exec "$python_bin" benchmarks/bench_gpu.py --seconds "$seconds" "$@"
