"""TFPO training throughput on the default patient: response tokens per second of one optimizer step
(forward + backward + AdamW, batch of 8 pairs = 16 responses from the bundled positivity set with their
stage-1 rewards), for the full-size LoRA doctor and the small (15-layer) doctor; plus the GenARM loss on the
same LoRA doctor as a reference point. Medians over steps after a warm-up.

    python bench/bench_tfpo_train.py [--rewards R] [--device cpu|cuda] [--steps 5]
"""
from __future__ import annotations

import argparse
import functools
import pathlib
import time

import torch

from common import run_meta, write_results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rewards", default=None, help="a rewards file (default: the quickstart's, computed if absent)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    import transformers

    from fastdoctor import genarm
    from fastdoctor.llmdoctor import quickstart, recipes, tfpo
    from fastdoctor.llmdoctor.data import bundled_preferences
    from fastdoctor.llmdoctor.doctor import Doctor
    from fastdoctor.models import cache_dir, load_model
    from fastdoctor.llmdoctor.rewards import FACES, RewardSettings, acquire_rewards

    transformers.logging.disable_progress_bar()
    patient, tokenizer = load_model("default", device=args.device)
    path = pathlib.Path(args.rewards) if args.rewards else (
        cache_dir() / "quickstart" / quickstart.QuickstartSettings().digest() / "rewards.safetensors")
    if not path.exists():
        acquire_rewards(patient, tokenizer, bundled_preferences("train"), path, RewardSettings(faces=FACES["positivity"]))
    examples = recipes.scored_examples(path, tokenizer, patient)
    batches = [examples[i: i + 8] for i in range(0, 8 * (args.steps + 1), 8)]
    rows = []
    for name, kind, method in (("TFPO, full-size LoRA doctor", "full", "tfpo"),
                               ("TFPO, small 15-layer doctor", "small", "tfpo"),
                               ("GenARM BT, full-size LoRA", "full", "genarm")):
        lm = recipes.build_lm(patient, recipes.DoctorInit(kind=kind))
        doctor = Doctor(lm).to(args.device)
        if method == "tfpo":
            loss_fn = functools.partial(tfpo.tfpo_batch_loss, doctor, settings=tfpo.TFPOSettings(), device=args.device)
        else:
            loss_fn = functools.partial(genarm.arm_batch_loss, lm, device=args.device)
        optimizer = torch.optim.AdamW([p for p in doctor.parameters() if p.requires_grad], lr=1e-5)
        rates, seconds = [], []
        for step, batch in enumerate(batches):
            began = time.perf_counter()
            loss, metrics = loss_fn(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if args.device == "cuda":
                torch.cuda.synchronize()
            if step:  # the first step warms up allocators and kernels
                seconds.append(time.perf_counter() - began)
                rates.append(metrics["tokens"] / seconds[-1])
        trainable = sum(p.numel() for p in doctor.parameters() if p.requires_grad)
        rows.append({"variant": name, "trainable_M": trainable / 1e6, "step_s": sorted(seconds)[len(seconds) // 2],
                     "tokens_per_s": sorted(rates)[len(rates) // 2]})
        print(rows[-1], flush=True)
        del doctor, lm, optimizer
    columns = [("variant", "variant"), ("trainable_M", "trainable params (M)"), ("step_s", "s / step (8 pairs)"),
               ("tokens_per_s", "response tokens/s")]
    json_path, md_path = write_results("tfpo_train", args.device, run_meta(args.device), rows, columns,
                                       note="Default patient (SmolLM2-135M-Instruct), fp32, 8 pairs per step, "
                                            f"median of {args.steps} steps after one warm-up step.")
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
