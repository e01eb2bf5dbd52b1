"""SubTB (TFPO) loss: the O(L) closed form against the explicit O(L^2) pair sum, forward + backward, batch 8,
float32, at L in {256, 1024}: time and the rise of peak memory during one call (RSS on the CPU, allocated
memory on a GPU).

    python bench/bench_tfpo.py [--device cpu|cuda] [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse

import torch

from fastdoctor.llmdoctor import tfpo
from common import Spread, add_options, peak_memory_rise, run_meta, start, time_op, write_results

LOSSES = (("closed_form", tfpo.subtb_loss), ("pairwise", tfpo.subtb_loss_pairwise))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser, quick="L = 64 only")  # the loss is float32 by design: no --dtype
    args = parser.parse_args()
    start(args)
    device = args.device
    rows = []
    for length in (64,) if args.quick else (256, 1024):
        g = torch.Generator().manual_seed(length)
        rewards = torch.randn(8, length, generator=g).to(device)
        mask = torch.ones(8, length, dtype=torch.bool, device=device)
        token_logp = (-torch.rand(8, length, generator=g)).to(device).requires_grad_()
        log_v = torch.randn(8, length + 1, generator=g).to(device).requires_grad_()

        def step(loss_fn):
            return lambda: loss_fn(rewards, token_logp, log_v, mask).backward()

        times = {name: time_op(step(fn), device) for name, fn in LOSSES}
        memory = {name: peak_memory_rise(step(fn), device) for name, fn in LOSSES}
        rows.append({"length": length, **times["closed_form"].fields("closed_form_ms"),
                     **times["pairwise"].fields("pairwise_ms"),
                     "speedup": times["pairwise"].median / times["closed_form"].median,
                     "closed_form_MB": memory["closed_form"] / 2**20, "pairwise_MB": memory["pairwise"] / 2**20})
        print(rows[-1], flush=True)
    columns = [("length", "L"), Spread("closed_form_ms", "O(L) ms min / median / max"),
               Spread("pairwise_ms", "O(L^2) ms min / median / max"), ("speedup", "speed-up"),
               ("closed_form_MB", "O(L) peak rise MB"), ("pairwise_MB", "O(L^2) peak rise MB")]
    json_path, md_path = write_results("tfpo_subtb", device, run_meta(device, quick=args.quick), rows, columns,
                                       out=args.out, note="Batch 8, float32, forward + backward; speed-up = ratio "
                                                          "of medians.")
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
