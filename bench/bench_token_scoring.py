"""Microbenchmark: target log-probabilities of a response, T tokens over a V = 49152 vocabulary.

  reference          log_softmax(logits) then gather (what training code writes), from logits [T, V]
  fused logits       ops.target_log_probs_from_logits: one pass, no [T, V] log_softmax
  reference (hidden) logits = hidden @ W^T, then log_softmax + gather
  fused chunked      ops.target_log_probs_from_hidden: vocabulary chunks of 4096, [T, V] never exists

Median times in the same run; peak extra memory measured in a fresh subprocess per variant: on the CPU,
the rise of peak RSS (VmHWM, reset once the inputs exist) over the resident inputs; on a GPU,
torch.cuda.max_memory_allocated.

    python bench/bench_token_scoring.py [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

from fastdoctor import ops, reference
from common import median_seconds, run_meta, write_results

VOCAB, HIDDEN = 49152, 576  # SmolLM2-135M's vocabulary and width


def make_inputs(tokens: int, device: str):
    g = torch.Generator().manual_seed(tokens)
    hidden = torch.randn(tokens, HIDDEN, generator=g).to(device)
    weight = (torch.randn(VOCAB, HIDDEN, generator=g) / HIDDEN**0.5).to(device)
    targets = torch.randint(0, VOCAB, (tokens,), generator=g).to(device)
    return hidden, weight, targets


def variants(hidden, weight, targets, logits):
    return {
        "reference": lambda: reference.target_log_probs_from_logits(logits, targets),
        "fused_logits": lambda: ops.target_log_probs_from_logits(logits, targets, validate=False),
        "reference_hidden": lambda: reference.target_log_probs_from_hidden(hidden, weight, targets),
        "fused_chunked": lambda: ops.target_log_probs_from_hidden(hidden, weight, targets, validate=False),
    }


def peak_extra_bytes(name: str, tokens: int, device: str) -> int:
    """Runs one variant in a fresh process and reports how far its peak memory rose above the inputs'."""
    code = f"""
import sys, torch
sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r})
from bench_token_scoring import make_inputs, variants
hidden, weight, targets = make_inputs({tokens}, {device!r})
logits = hidden @ weight.T if {name!r} in ("reference", "fused_logits") else None
if {device!r} == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    variants(hidden, weight, targets, logits)[{name!r}](); torch.cuda.synchronize()
    print(torch.cuda.max_memory_allocated() - base)
else:
    from common import peak_rss_rise  # peak RSS reset once the inputs exist: only the variant's own rise
    print(peak_rss_rise(variants(hidden, weight, targets, logits)[{name!r}]))
"""
    # A fixed mmap threshold makes every large buffer its own mapping, returned on free, so RSS tracks use.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    meta = run_meta(args.device)
    rows = []
    for tokens in (512, 2048):
        hidden, weight, targets = make_inputs(tokens, args.device)
        logits = hidden @ weight.T
        timings = {name: median_seconds(fn, args.device) for name, fn in
                   variants(hidden, weight, targets, logits).items()}
        memory = {name: peak_extra_bytes(name, tokens, args.device) for name in timings}
        row = {"tokens": tokens, "vocab": VOCAB,
               **{f"{k}_ms": v * 1e3 for k, v in timings.items()},
               **{f"{k}_MB": v / 2**20 for k, v in memory.items()},
               "speedup_logits": timings["reference"] / timings["fused_logits"],
               "speedup_hidden": timings["reference_hidden"] / timings["fused_chunked"],
               "memory_ratio_hidden": memory["fused_chunked"] / max(memory["reference_hidden"], 1)}
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    columns = [("tokens", "T"), ("reference_ms", "log_softmax+gather ms"), ("fused_logits_ms", "fused ms"),
               ("speedup_logits", "speed-up"), ("reference_hidden_ms", "matmul+log_softmax ms"),
               ("fused_chunked_ms", "chunked ms"), ("speedup_hidden", "speed-up (hidden)"),
               ("reference_hidden_MB", "reference peak extra MB"), ("fused_chunked_MB", "chunked peak extra MB"),
               ("memory_ratio_hidden", "memory ratio")]
    json_path, md_path = write_results("token_scoring", args.device, meta, rows, columns,
                                       note=f"V = {VOCAB}, H = {HIDDEN}, fp32; medians; chunk 4096.")
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
