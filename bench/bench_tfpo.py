"""SubTB (TFPO) loss: the O(L) closed form against the explicit O(L^2) pair sum, forward + backward, batch 8,
float32, at L in {256, 1024}: median time and the rise of peak RSS during one call (CPU).

    python bench/bench_tfpo.py
"""
from __future__ import annotations

import torch

from fastdoctor.llmdoctor import tfpo
from common import median_seconds, peak_rss_rise, run_meta, write_results


def main() -> None:
    rows = []
    for length in (256, 1024):
        g = torch.Generator().manual_seed(length)
        rewards = torch.randn(8, length, generator=g)
        mask = torch.ones(8, length, dtype=torch.bool)
        token_logp = (-torch.rand(8, length, generator=g)).requires_grad_()
        log_v = torch.randn(8, length + 1, generator=g).requires_grad_()

        def step(loss_fn):
            return lambda: loss_fn(rewards, token_logp, log_v, mask).backward()

        times = {name: median_seconds(step(fn), "cpu") for name, fn in
                 (("closed_form", tfpo.subtb_loss), ("pairwise", tfpo.subtb_loss_pairwise))}
        memory = {name: peak_rss_rise(step(fn)) for name, fn in
                  (("closed_form", tfpo.subtb_loss), ("pairwise", tfpo.subtb_loss_pairwise))}
        rows.append({"length": length, "closed_form_ms": times["closed_form"] * 1e3,
                     "pairwise_ms": times["pairwise"] * 1e3, "speedup": times["pairwise"] / times["closed_form"],
                     "closed_form_MB": memory["closed_form"] / 2**20, "pairwise_MB": memory["pairwise"] / 2**20})
        print(rows[-1], flush=True)
    columns = [("length", "L"), ("closed_form_ms", "O(L) ms"), ("pairwise_ms", "O(L^2) ms"), ("speedup", "speed-up"),
               ("closed_form_MB", "O(L) peak rise MB"), ("pairwise_MB", "O(L^2) peak rise MB")]
    json_path, md_path = write_results("tfpo_subtb", "cpu", run_meta("cpu"), rows, columns,
                                       note="Batch 8, float32, forward + backward; medians.")
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
