"""TFPO training throughput on the default patient: response tokens per second of one optimizer step
(forward + backward + AdamW, batch of 8 pairs = 16 responses from the bundled positivity set with their
stage-1 rewards), for the full-size LoRA doctor and the small (15-layer) doctor; plus the GenARM loss on the
same LoRA doctor as a reference point. Min / median / max over steps after a warm-up step.

    python bench/bench_tfpo_train.py [--rewards R] [--steps 5] [--autocast auto|bf16|none]
                                     [--device cpu|cuda] [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import functools
import pathlib
import tempfile
import time

import torch

from common import Spread, Timing, add_options, display_path, run_meta, start, synchronize, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rewards", default=None, help="a rewards file (default: the quickstart's, computed if absent)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-pairs", type=int, default=8)
    parser.add_argument("--autocast", choices=("auto", "bf16", "none"), default="auto",
                        help="as fastdoctor.train.TrainConfig: auto is bf16 on CUDA, none on the CPU")
    add_options(parser, quick="rewards for 2 pairs computed into a temporary folder, 1 timed step of 1 pair, no "
                              "warm-up step")
    args = parser.parse_args()
    start(args)
    if args.quick:
        args.steps, args.batch_pairs = 1, 1
    import transformers

    from fastdoctor import genarm
    from fastdoctor.llmdoctor import quickstart, recipes, tfpo
    from fastdoctor.llmdoctor.data import bundled_preferences
    from fastdoctor.llmdoctor.doctor import Doctor
    from fastdoctor.models import load_model
    from fastdoctor.llmdoctor.rewards import FACES, RewardSettings, acquire_rewards

    transformers.logging.disable_progress_bar()
    device = args.device
    use_bf16 = args.autocast == "bf16" or (args.autocast == "auto" and device == "cuda")
    patient, tokenizer = load_model("default", device=device)
    scratch = tempfile.TemporaryDirectory() if args.quick else None  # a smoke run leaves the cache alone
    if scratch:
        path = pathlib.Path(scratch.name) / "rewards.safetensors"
    else:
        path = pathlib.Path(args.rewards) if args.rewards else (
            quickstart.rewards_cache(quickstart.QuickstartSettings(), "positivity"))
    if not path.exists():
        pairs = bundled_preferences("train")[: 2 if args.quick else None]
        acquire_rewards(patient, tokenizer, pairs, path, RewardSettings(faces=FACES["positivity"]))
    examples = recipes.scored_examples(path, tokenizer, patient)
    size = args.batch_pairs
    warmup = 0 if args.quick else 1  # the first step warms up allocators and kernels
    def batches_of(items):  # the same pairs for every variant: consecutive slices, wrapping around
        return [items[(i * size) % len(items):][:size] for i in range(args.steps + warmup)]

    rows = []
    for name, kind, method in (("TFPO, full-size LoRA doctor", "full", "tfpo"),
                               ("TFPO, small 15-layer doctor", "small", "tfpo"),
                               ("GenARM BT, full-size LoRA", "full", "genarm")):
        lm = recipes.build_lm(patient, recipes.DoctorInit(kind=kind))
        doctor = Doctor(lm).to(device)
        if method == "tfpo":  # the reference flow's log-probs are computed once, before training: not timed here
            steps = batches_of(tfpo.with_reference_log_probs(lm, examples, device=device, autocast=use_bf16))
            loss_fn = functools.partial(tfpo.tfpo_batch_loss, doctor, settings=tfpo.TFPOSettings(), device=device,
                                        eos_id=tokenizer.eos_token_id)
        else:
            steps = batches_of(examples)
            loss_fn = functools.partial(genarm.arm_batch_loss, lm, device=device)
        optimizer = torch.optim.AdamW([p for p in doctor.parameters() if p.requires_grad], lr=1e-5)
        seconds, tokens = [], []
        for step, batch in enumerate(steps):
            began = time.perf_counter()
            with torch.autocast(device, dtype=torch.bfloat16, enabled=use_bf16):
                loss, metrics = loss_fn(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            synchronize(device)
            if step >= warmup:
                seconds.append(time.perf_counter() - began)
                tokens.append(metrics["tokens"])
        timing = Timing.of(seconds)
        rates = Timing.of([n / s for n, s in zip(tokens, seconds)])  # a rate per step: steps differ in tokens
        trainable = sum(p.numel() for p in doctor.parameters() if p.requires_grad)
        rows.append({"variant": name, "trainable_M": trainable / 1e6, **timing.fields("step_s", scale=1.0),
                     "tokens_per_s": rates.median, "tokens_per_s_min": rates.min, "tokens_per_s_max": rates.max,
                     "steps": timing.reps})
        print(rows[-1], flush=True)
        del doctor, lm, optimizer
    columns = [("variant", "variant"), ("trainable_M", "trainable params (M)"),
               Spread("step_s", f"s / step ({size} pairs) min / median / max"),
               Spread("tokens_per_s", "response tokens/s min / median / max")]
    meta = run_meta(device, autocast="bf16" if use_bf16 else "none", batch_pairs=size, quick=args.quick,
                    rewards="computed for 2 pairs (--quick)" if scratch else display_path(path))
    json_path, md_path = write_results("tfpo_train", device, meta, rows, columns, out=args.out,
                                       note=f"Default patient (SmolLM2-135M-Instruct), fp32 weights, autocast "
                                            f"{meta['autocast']}, {size} pairs per step, {args.steps} timed step(s)"
                                            + (" after one warm-up step." if warmup else ", no warm-up."))
    print(f"wrote {json_path} and {md_path}")
    if scratch:
        scratch.cleanup()


if __name__ == "__main__":
    main()
