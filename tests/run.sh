#!/usr/bin/env bash
# The README's test command: build and install the wheel into .venv (CPU torch 2.13.0), then run the
# test suite against the installed package (not the source tree).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FASTDOCTOR_VENV:-$repo/.venv}"
bash "$repo/python/install.sh" "$venv" "torch==2.13.0" "pytest>=8" scipy trl
cd "$repo"
FASTDOCTOR_TEST_INSTALLED=1 "$venv/bin/python" -m pytest tests "$@"
