#!/usr/bin/env bash
# Builds and installs the wheel into .venv (CPU torch 2.13.0), then runs the
# mix-and-sample microbenchmark against the eager PyTorch chain. Results go to bench/results/.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FASTDOCTOR_VENV:-$repo/.venv}"
bash "$repo/python/install.sh" "$venv" "torch==2.13.0"
cd "$repo"
"$venv/bin/python" bench/bench_mix_sample.py "$@"
