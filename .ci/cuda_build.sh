#!/usr/bin/env bash
# CI's CUDA-compile stage: nvcc is on the CPU machines, so the CUDA kernels are compiled, linked and
# imported on every run (FASTDOCTOR_CUDA=ON fails loudly if nvcc or a CUDA torch is missing), in a separate
# venv with the CUDA build of torch. The CPU tests then run against that CUDA-enabled build, since it must
# also work on a machine without a GPU (the gpu-marked tests skip there).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FASTDOCTOR_CUDA_VENV:-$repo/.venv-cuda}"
FASTDOCTOR_CUDA=ON bash "$repo/python/install.sh" "$venv" "torch==2.14.1" "pytest>=8" scipy trl
"$venv/bin/python" -c "
from fastdoctor import _C
info = _C.build_info()
assert info['cuda_compiled'], info
print('[ci] CUDA kernels compiled for sm_' + info['cuda_archs'])
"
cd "$repo"
FASTDOCTOR_TEST_INSTALLED=1 "$venv/bin/python" -m pytest tests
