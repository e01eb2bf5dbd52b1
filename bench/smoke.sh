#!/usr/bin/env bash
# Smoke test of every benchmark: each script with --device cpu --quick --threads 1 into a temporary folder
# (bench/results is never touched), one line per script with its wall time; fails if any script fails.
# Uses the venv tests/run.sh builds (CI runs this after it).
#   usage: bash bench/smoke.sh [script names...]   (default: all nineteen)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FASTDOCTOR_VENV:-$repo/.venv}"
scripts=("$@")
[ ${#scripts[@]} -gt 0 ] || scripts=(bench_mix_sample bench_router_gating bench_token_scoring bench_tfpo bench_rewards
                                     bench_generate bench_shared_base bench_shared_base_step bench_taro_generate bench_distill bench_tfpo_train eval_quality eval_dtype
                                     eval_taro probe_taro_levels eval_fronts ablate_fronts bench_first_call bench_tensor_parallel)
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cd "$repo"
failed=0
started=$SECONDS
for name in "${scripts[@]}"; do
  began=$SECONDS
  if "$venv/bin/python" "bench/$name.py" --device cpu --quick --threads 1 --out "$out/results" \
       > "$out/$name.log" 2>&1; then
    printf '[smoke] ok    %-22s %4d s\n' "$name" $((SECONDS - began))
  else
    printf '[smoke] FAIL  %-22s %4d s; the end of its output:\n' "$name" $((SECONDS - began))
    tail -n 25 "$out/$name.log" | sed 's/^/    /'
    failed=$((failed + 1))
  fi
done
# Every result names its commit, command and hardware, and cites no temporary path.
if ! "$venv/bin/python" - "$out" <<'PY'; then failed=$((failed + 1)); fi
import json, pathlib, sys, tempfile
out = pathlib.Path(sys.argv[1])
temporary = (str(out), tempfile.gettempdir() + "/")
bad = []
for path in sorted((out / "results").glob("*.json")):
    text, meta = path.read_text(), json.loads(path.read_text())
    missing = [k for k in ("commit", "command", "hardware") if not meta.get(k)]
    missing += [] if ("threads" in meta or "gpu" in meta) else ["threads/gpu"]
    cited = [t for t in temporary if t in text or t in path.with_suffix(".md").read_text()]
    if missing or cited:
        bad.append(f"{path.name}: missing {missing}" if missing else f"{path.name}: cites {cited[0]}")
print(f"[smoke] results checked: {len(list((out / 'results').glob('*.json')))} JSON files", *bad, sep="\n  ")
sys.exit(1 if bad else 0)
PY
echo "[smoke] ${#scripts[@]} scripts, $failed failed, $((SECONDS - started)) s in all"
[ "$failed" -eq 0 ]
