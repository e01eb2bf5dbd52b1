"""Adapter doctors decoded inside the patient's own forward (fastdoctor.shared_base) against the same doctors as
separate merged models, on the default patient, all in one run:

  (a) shared    generate(patient, doctors=[K LoRA adapters over the patient]): one stacked forward per step
  (b) separate  the same K doctors merged into standalone models: one forward per model per step (the path
                every peer takes: GenARM, model_arithmetic, proxy-tuning)
  (c) patient   the patient alone at B rows, t(B); and at (1 + K) * B rows, t((1 + K) B)

ceiling = (1 + K) * t(B) / t((1 + K) B): what (a)/(b) would be if the LoRA deltas cost nothing and the doctors'
forwards cost what the patient's does. The target is (a)/(b) >= 0.9 * ceiling. The doctors are rank-8 LoRAs on
every projection with random non-zero weights (the trained doctor's shapes; speed does not depend on values).

    python bench/bench_shared_base.py [--cases 1x64,8x64,1x256,8x256] [--doctors 1,2] [--dtypes float32,bfloat16]
                                      [--device cpu|cuda] [--threads 2] [--reps 3] [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse

import torch

import fastdoctor
from fastdoctor import adapters, weights
from fastdoctor.lora import attach_lora
from common import (MODEL_CHOICES, Spread, add_options, load_patient, parse_cases, prompt_ids, run_meta, start,
                    time_interleaved, write_results)

PROMPT = "I missed my bus this morning and then it started to rain. What should I do to cheer up?"
PROMPT_TOKENS = 51  # PROMPT under SmolLM2's chat template


def random_adapter(patient, seed: int) -> adapters.AdapterDoctor:
    """A rank-8 AdapterDoctor of `patient` on every projection, B drawn at 0.01 (A as peft initialises it)."""
    torch.manual_seed(seed)
    lm = attach_lora(weights.weight_sharing_copy(patient), rank=8)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.01)
    doctor, why = adapters.snapshot(lm.eval())
    assert doctor is not None, why
    return doctor.to()  # tensors of its own, not the peft model's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=parse_cases, default=None, metavar="BxT,...",
                        help="batch x new tokens (default: 1x64,8x64,1x256,8x256)")
    parser.add_argument("--doctors", default="1,2", help="numbers of adapter doctors K (default: 1,2)")
    parser.add_argument("--dtypes", default=None, help="weights (default: float32,bfloat16 on the CPU, bfloat16 on CUDA)")
    parser.add_argument("--model", choices=MODEL_CHOICES, default="auto", help="the patient (see bench_generate.py)")
    parser.add_argument("--reps", type=int, default=3,
                        help="timed rounds of each 64-token (or shorter) case, every variant once a round, "
                             "interleaved; longer cases run half as many (default: 3)")
    add_options(parser, quick="B = 2, K = 1, 4 new tokens, float32, one timed run", threads=2)
    args = parser.parse_args()
    start(args)
    device = args.device
    dtypes = (["float32"] if args.quick else (args.dtypes or ("bfloat16" if device == "cuda" else
                                                               "float32,bfloat16")).split(","))
    counts = [1] if args.quick else [int(k) for k in args.doctors.split(",")]
    cases = args.cases or ([(2, 4)] if args.quick else [(1, 64), (8, 64), (1, 256), (8, 256)])
    columns = [("dtype", "dtype"), ("batch", "B"), ("doctors", "K"), ("new_tokens", "new tokens"), ("reps", "runs"),
               Spread("shared_tok_s", "(a) shared tok/s min / median / max"),
               Spread("separate_tok_s", "(b) separate tok/s min / median / max"),
               Spread("patient_tok_s", "(c) patient alone tok/s"), ("speedup", "(a)/(b)"),
               ("ceiling", "ceiling (1+K)t(B)/t((1+K)B)"), ("of_ceiling", "(a)/(b) / ceiling")]
    rows, meta = [], None
    for dtype_label in dtypes:
        dtype = getattr(torch, dtype_label)
        patient, tokenizer, patient_label = load_patient(args.model, device, dtype)
        prompt = prompt_ids(tokenizer, PROMPT, PROMPT_TOKENS, patient.config.vocab_size).to(device)
        shared_all = [random_adapter(patient, seed) for seed in range(max(counts))]
        merged_all = [d.merged_model(patient) for d in shared_all]
        for model in merged_all:  # as load_model gives them (a frozen LM head takes a slow path in torch 2.13)
            model.requires_grad_(True)
        meta = meta or run_meta(device, patient=patient_label, lora_rank=8, top_p=0.9, quick=args.quick,
                                prompt_tokens=prompt.shape[1], dtypes=dtypes)
        for k in counts:
            shared, merged, betas = shared_all[:k], merged_all[:k], [0.5] * k
            for batch, new_tokens in cases:
                reps = 1 if args.quick else args.reps if new_tokens <= 64 else max(1, (args.reps + 1) // 2)
                ids = prompt.expand(batch, -1).contiguous()
                stacked_ids = prompt.expand((1 + k) * batch, -1).contiguous()
                common = dict(max_new_tokens=new_tokens, top_p=0.9, seed=0)
                with torch.inference_mode():
                    fastdoctor.generate(patient, ids, doctors=shared, betas=betas, max_new_tokens=2)  # builds the stack
                    t = time_interleaved({
                        "shared": lambda: fastdoctor.generate(patient, ids, doctors=shared, betas=betas, **common),
                        "separate": lambda: fastdoctor.generate(patient, ids, doctors=merged, betas=betas, **common),
                        "patient": lambda: fastdoctor.generate(patient, ids, **common),
                        "patient_stacked": lambda: fastdoctor.generate(patient, stacked_ids, **common),
                    }, reps, device)
                tokens = batch * new_tokens
                median = {key: timing.median for key, timing in t.items()}
                speedup = median["separate"] / median["shared"]
                ceiling = (1 + k) * median["patient"] / median["patient_stacked"]
                row = {"dtype": dtype_label, "batch": batch, "doctors": k, "new_tokens": new_tokens, "reps": reps,
                       **{f: v for key in ("shared", "separate", "patient")
                          for f, v in t[key].rate_fields(f"{key}_tok_s", tokens).items()},
                       "speedup": speedup, "ceiling": ceiling, "of_ceiling": speedup / ceiling}
                rows.append(row)
                print(f"{dtype_label} B={batch} K={k} new={new_tokens}: shared {row['shared_tok_s']:.1f} tok/s, "
                      f"separate {row['separate_tok_s']:.1f}, patient {row['patient_tok_s']:.1f}; (a)/(b) "
                      f"{speedup:.2f}x, ceiling {ceiling:.2f}x ({speedup / ceiling:.0%})", flush=True)
                write_results("shared_base", device, meta, rows, columns, note=(
                    f"Patient: {patient_label}; K rank-8 LoRA doctors (beta 0.5 each), top-p 0.9, prompt "
                    f"{prompt.shape[1]} tokens. tok/s counts every row's tokens; ratios use medians. ceiling = "
                    "(1+K) t(B) / t((1+K)B) from the patient alone at B and (1+K)B rows in the same run."), out=args.out)


if __name__ == "__main__":
    main()
