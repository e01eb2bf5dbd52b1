#!/usr/bin/env bash
# The README's main command: build and install the wheel into .venv (CPU torch 2.13.0), then run
# `fastdoctor quickstart`: LLMdoctor end to end on the embedded default patient (rewards, TFPO doctor,
# steered generation, a quality table). Artefacts are cached, so a second run prints the table in seconds.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FASTDOCTOR_VENV:-$repo/.venv}"
bash "$repo/python/install.sh" "$venv" "torch==2.13.0"
"$venv/bin/fastdoctor" quickstart "$@"
