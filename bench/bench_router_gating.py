"""Microbenchmark: the fused TARo step (router top-K + MLP + mix + sample in one op) against the eager PyTorch
chain that research code runs (torch.topk per model, embedding lookup, Linear-tanh-Linear-sigmoid, then the
eager mix-and-sample chain or a greedy argmax), both measured in the same run on the same inputs.
Base and reward-model logits ~ N(0, 3^2); router K = 20, d = 32, H = 128 (the 3P defaults, METHODS.md §3.5).

    python bench/bench_router_gating.py [--device cpu|cuda] [--dtype bfloat16] [--quick] [--out DIR]

Writes <out>/router_gating_<hardware>.json and .md and prints the table.
"""
from __future__ import annotations

import argparse

import torch

import baselines
from common import Spread, add_options, dtype_name, resolve_dtype, run_meta, start, time_op, write_results

SAMPLING = {"top-p 0.9": dict(temperature=0.9, top_p=0.9), "greedy": dict(temperature=0.0, top_p=1.0)}
TOP_K_FEATURES, EMBED_DIM, HIDDEN = 20, 32, 128


def make_router(vocab: int, device: str, generator: torch.Generator) -> list[torch.Tensor]:
    width = 2 * TOP_K_FEATURES * (EMBED_DIM + 1)
    router = [torch.randn(vocab, EMBED_DIM, generator=generator),
              torch.randn(HIDDEN, width, generator=generator) / width**0.5, torch.zeros(HIDDEN),
              torch.randn(HIDDEN, generator=generator) / HIDDEN**0.5, torch.zeros(1)]
    return [p.to(device) for p in router]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser, quick="B in {1, 8} only",
                dtype="logit dtype (default: float32 on the CPU, bfloat16 on CUDA)")
    args = parser.parse_args()
    start(args)
    device, dtype = args.device, resolve_dtype(args)
    batches = (1, 8) if args.quick else (1, 8, 32)
    vocab = 49152
    meta = run_meta(device, logit_dtype=dtype_name(dtype), top_k_features=TOP_K_FEATURES, embed_dim=EMBED_DIM,
                    hidden=HIDDEN, quick=args.quick)

    rows = []
    generator = torch.Generator().manual_seed(0)
    router = make_router(vocab, device, generator)
    for batch in batches:
        base, rm = ((torch.randn(batch, vocab, generator=generator) * 3).to(dtype).to(device) for _ in range(2))
        top_k = torch.zeros(batch, dtype=torch.int64, device=device)
        seed = torch.arange(batch, device=device)
        step = torch.zeros(batch, dtype=torch.int64, device=device)
        for name, sampling in SAMPLING.items():
            temperature = torch.full((batch,), sampling["temperature"], device=device)
            top_p = torch.full((batch,), sampling["top_p"], device=device)
            fused = time_op(lambda: torch.ops.fastdoctor.routed_sampling_from_logits(
                base, rm, *router, temperature, top_k, top_p, seed, step, TOP_K_FEATURES, -1), device)
            eager = time_op(lambda: baselines.eager_routed_sampling_chain(
                base, rm, *router, temperature, top_k, top_p, TOP_K_FEATURES), device, min_reps=3)
            row = {"batch": batch, "vocab": vocab, "sampling": name, **fused.fields("fused_ms"),
                   **eager.fields("eager_ms"), "speedup": eager.median / fused.median, "reps": fused.reps}
            rows.append(row)
            print(f"B={batch:<4} V={vocab:<7} {name:<10} fused {row['fused_ms']:8.3f} ms   "
                  f"eager {row['eager_ms']:9.3f} ms   {row['speedup']:6.1f}x", flush=True)

    columns = [("batch", "B"), ("vocab", "V"), ("sampling", "sampling"),
               Spread("fused_ms", "fused ms min / median / max"), Spread("eager_ms", "eager ms min / median / max"),
               ("speedup", "speed-up")]
    json_path, md_path = write_results(
        "router_gating", device, meta, rows, columns, out=args.out,
        note=f"Base + reward-model {meta['logit_dtype']} logits; router K = {TOP_K_FEATURES}, d = {EMBED_DIM}, "
             f"H = {HIDDEN}; top-p rows at temperature 0.9; speed-up = eager chain / fused op medians in "
             "the same run. The eager chain: torch.topk per model, embedding, Linear-tanh-Linear-sigmoid, then "
             "baselines.eager_mix_sample_chain (log_softmax per model, mix, filters, multinomial; greedy: argmax).")
    print(f"\nwrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
