"""Microbenchmark: target log-probabilities of a response, T tokens over a V = 49152 vocabulary.

  reference          log_softmax(logits) then gather (what training code writes), from logits [T, V]
  fused logits       ops.target_log_probs_from_logits: one pass, no [T, V] log_softmax
  reference (hidden) logits = hidden @ W^T, then log_softmax + gather
  fused chunked      ops.target_log_probs_from_hidden: vocabulary chunks of 4096, [T, V] never exists

Times in the same run; peak extra memory measured in a fresh subprocess per variant (--quick: one subprocess
for all four, each measured after a reset): on the CPU, the rise of peak RSS (VmHWM, reset once the inputs
exist) over the resident inputs; on a GPU, torch.cuda.max_memory_allocated above the inputs.

    python bench/bench_token_scoring.py [--device cpu|cuda] [--dtype bfloat16] [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

from fastdoctor import ops, reference
from common import Spread, add_options, dtype_name, resolve_dtype, run_meta, start, time_op, write_results

VOCAB, HIDDEN = 49152, 576  # SmolLM2-135M's vocabulary and width


def make_inputs(tokens: int, device: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(tokens)
    hidden = torch.randn(tokens, HIDDEN, generator=g).to(device, dtype)
    weight = (torch.randn(VOCAB, HIDDEN, generator=g) / HIDDEN**0.5).to(device, dtype)
    targets = torch.randint(0, VOCAB, (tokens,), generator=g).to(device)
    return hidden, weight, targets


def variants(hidden, weight, targets, logits):
    return {
        "reference": lambda: reference.target_log_probs_from_logits(logits, targets),
        "fused_logits": lambda: ops.target_log_probs_from_logits(logits, targets, validate=False),
        "reference_hidden": lambda: reference.target_log_probs_from_hidden(hidden, weight, targets),
        "fused_chunked": lambda: ops.target_log_probs_from_hidden(hidden, weight, targets, validate=False),
    }


def peak_extra_bytes(names: list[str], tokens: int, device: str, dtype: torch.dtype) -> dict[str, int]:
    """Runs the variants one after another in a fresh process; each reports how far peak memory rose above
    what was resident before it (the inputs)."""
    code = f"""
import sys, torch
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
from bench_token_scoring import make_inputs, variants
from common import peak_memory_rise
hidden, weight, targets = make_inputs({tokens}, {device!r}, torch.{dtype_name(dtype)})
logits = hidden @ weight.T if any(n in ("reference", "fused_logits") for n in {names!r}) else None
fns = variants(hidden, weight, targets, logits)
print([peak_memory_rise(fns[name], {device!r}) for name in {names!r}])
"""
    # A fixed mmap threshold makes every large buffer its own mapping, returned on free, so RSS tracks use.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return dict(zip(names, json.loads(out.stdout.strip().splitlines()[-1])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser, quick="T = 32 only; memory of the four variants measured in one subprocess",
                dtype="hidden states, LM head and logits (default: float32 on the CPU, bfloat16 on CUDA)")
    args = parser.parse_args()
    start(args)
    device, dtype = args.device, resolve_dtype(args)
    meta = run_meta(device, dtype=dtype_name(dtype), chunk_size=4096, quick=args.quick)
    rows = []
    for tokens in (32,) if args.quick else (512, 2048):
        hidden, weight, targets = make_inputs(tokens, device, dtype)
        logits = hidden @ weight.T
        timings = {name: time_op(fn, device) for name, fn in variants(hidden, weight, targets, logits).items()}
        if args.quick:
            memory = peak_extra_bytes(list(timings), tokens, device, dtype)
        else:
            memory = {name: peak_extra_bytes([name], tokens, device, dtype)[name] for name in timings}
        row = {"tokens": tokens, "vocab": VOCAB,
               **{k: v for name, t in timings.items() for k, v in t.fields(f"{name}_ms").items()},
               **{f"{k}_MB": v / 2**20 for k, v in memory.items()},
               "speedup_logits": timings["reference"].median / timings["fused_logits"].median,
               "speedup_hidden": timings["reference_hidden"].median / timings["fused_chunked"].median,
               "memory_ratio_hidden": memory["fused_chunked"] / max(memory["reference_hidden"], 1)}
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    columns = [("tokens", "T"), Spread("reference_ms", "log_softmax+gather ms min / median / max"),
               Spread("fused_logits_ms", "fused ms min / median / max"), ("speedup_logits", "speed-up"),
               Spread("reference_hidden_ms", "matmul+log_softmax ms min / median / max"),
               Spread("fused_chunked_ms", "chunked ms min / median / max"), ("speedup_hidden", "speed-up (hidden)"),
               ("reference_hidden_MB", "reference peak extra MB"), ("fused_chunked_MB", "chunked peak extra MB"),
               ("memory_ratio_hidden", "memory ratio")]
    json_path, md_path = write_results(
        "token_scoring", device, meta, rows, columns, out=args.out,
        note=f"V = {VOCAB}, H = {HIDDEN}, {dtype_name(dtype)}; chunk 4096; speed-ups are ratios of medians.")
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
