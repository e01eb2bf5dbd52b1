"""Microbenchmark: the fused mix-and-sample op against the eager PyTorch chain that research code runs
today (log_softmax per model, weighted sum, temperature, top-k, sort-based top-p, softmax, multinomial),
both measured in the same run on the same inputs. Two models (patient + one doctor), logits ~ N(0, 3^2).

    python bench/bench_mix_sample.py [--device cpu|cuda] [--dtype bfloat16] [--quick] [--out DIR]

Writes <out>/mix_sample_<hardware>.json and .md and prints the table.
"""
from __future__ import annotations

import argparse

import torch

import baselines
from common import Spread, add_options, dtype_name, resolve_dtype, run_meta, start, time_op, write_results

FILTERS = {"none": dict(top_k=0, top_p=1.0), "top-k 50": dict(top_k=50, top_p=1.0),
           "top-p 0.9": dict(top_k=0, top_p=0.9)}
PEAK_GBPS = {"H100": 3350.0, "H200": 4800.0}  # HBM3 / HBM3e, SXM parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser, quick="B in {1, 8}, V = 49152 only",
                dtype="logit dtype (default: float32 on the CPU, bfloat16 on CUDA)")
    args = parser.parse_args()
    start(args)
    device, dtype = args.device, resolve_dtype(args)
    batches = (1, 8) if args.quick else (1, 8, 32, 128)
    vocabs = (49152,) if args.quick else (49152, 151936)
    meta = run_meta(device, logit_dtype=dtype_name(dtype), models=2, temperature=0.9, quick=args.quick)
    peak = next((v for k, v in PEAK_GBPS.items() if k in meta["hardware"]), None)

    rows = []
    generator = torch.Generator().manual_seed(0)
    for vocab in vocabs:
        for batch in batches:
            logits = [(torch.randn(batch, vocab, generator=generator) * 3).to(dtype).to(device) for _ in range(2)]
            weights = torch.tensor([[1.0, 0.8]], device=device).expand(batch, 2).contiguous()
            temperature = torch.full((batch,), 0.9, device=device)
            seed = torch.arange(batch, device=device)
            step = torch.zeros(batch, dtype=torch.int64, device=device)
            for name, flt in FILTERS.items():
                top_k = torch.full((batch,), flt["top_k"], dtype=torch.int64, device=device)
                top_p = torch.full((batch,), flt["top_p"], device=device)
                fused = time_op(lambda: torch.ops.fastdoctor.mixed_sampling_from_logits(
                    logits, weights, temperature, top_k, top_p, seed, step, -1), device)
                eager = time_op(lambda: baselines.eager_mix_sample_chain(
                    logits, weights, temperature, top_k, top_p), device, min_reps=3)
                read_bytes = sum(z.numel() * z.element_size() for z in logits)
                row = {"batch": batch, "vocab": vocab, "filter": name, **fused.fields("fused_ms"),
                       **eager.fields("eager_ms"), "speedup": eager.median / fused.median,
                       "fused_GBps": read_bytes / fused.median / 1e9, "reps": fused.reps}
                if peak:
                    row["hbm_pct"] = 100 * row["fused_GBps"] / peak
                rows.append(row)
                print(f"B={batch:<4} V={vocab:<7} {name:<10} fused {row['fused_ms']:8.3f} ms   "
                      f"eager {row['eager_ms']:9.3f} ms   {row['speedup']:6.1f}x   {row['fused_GBps']:7.1f} GB/s",
                      flush=True)

    columns = [("batch", "B"), ("vocab", "V"), ("filter", "filter"), Spread("fused_ms", "fused ms min / median / max"),
               Spread("eager_ms", "eager ms min / median / max"), ("speedup", "speed-up"),
               ("fused_GBps", "fused GB/s")]
    if peak:
        columns.append(("hbm_pct", "% of HBM peak"))
    json_path, md_path = write_results(
        "mix_sample", device, meta, rows, columns, out=args.out,
        note=f"Two {meta['logit_dtype']} logit tensors; speed-up = eager / fused medians in the same run; "
             "GB/s = logit bytes read / median fused time.")
    print(f"\nwrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
