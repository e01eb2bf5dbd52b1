"""Doctor initialisation (METHODS.md decision 8) on the default patient, measured on held-out patient text
(the bundled positivity test responses, teacher-forced):

  - greedy agreement: how often the doctor's argmax is the patient's;
  - mixed agreement: how often argmax(log p_patient + log p_doctor) (alpha = beta = 1) keeps the patient's;
  - the doctor's perplexity of the patient's text.

Rows: untrained truncations, the small doctor before and after distillation (KL to the patient on its own
responses to the bundled train prompts), and the full-size copy. The distilled doctor is kept in the cache
for reuse (bench/eval_quality.py --small-doctor).

    python bench/bench_distill.py [--layers 15] [--keep-last 7] [--steps 120] [--lr 1e-3]
"""
from __future__ import annotations

import argparse
import time

import torch

from common import run_meta, write_results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=15)
    parser.add_argument("--keep-last", type=int, default=7)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--held-out", type=int, default=45, help="held-out responses to measure on")
    args = parser.parse_args()
    import transformers

    from fastdoctor import distill, pipeline
    from fastdoctor.data import bundled_preferences
    from fastdoctor.models import cache_dir, load_model, make_doctor
    from fastdoctor.train import TrainConfig

    transformers.logging.disable_progress_bar()
    patient, tokenizer = load_model("default")
    held_out = distill.chat_sequences(tokenizer, bundled_preferences("test"), responses="chosen")[: args.held_out]
    rows = []

    def measure(name, lm, seconds=float("nan")):
        rows.append({"doctor": name, **distill.agreement(patient, lm, held_out), "train_s": seconds})
        print(rows[-1], flush=True)

    for layers in (6, args.layers):
        measure(f"first {layers} layers, untrained", make_doctor(patient, layers))
    init = pipeline.DoctorInit(kind="small", num_layers=args.layers, keep_last=args.keep_last)
    measure(f"{args.layers} layers (first {args.layers - args.keep_last} + last {args.keep_last}), untrained",
            make_doctor(patient, args.layers, keep_last=args.keep_last))
    sequences = distill.chat_sequences(tokenizer, bundled_preferences("train"))
    out = cache_dir() / "distilled" / f"L{args.layers}-k{args.keep_last}-s{args.steps}-lr{args.lr}"
    began = time.time()
    lm = pipeline.distill_small(patient, tokenizer, sequences, out, init,
                                TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                            warmup_steps=max(args.steps // 20, 1), log_every=10, checkpoint_every=20))
    seconds = time.time() - began
    lm.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    measure(f"{args.layers} layers, distilled {args.steps} steps", lm, seconds)
    measure("full-size copy (30 layers)", patient)
    columns = [("doctor", "doctor"), ("greedy_agreement", "greedy agreement"), ("mixed_agreement", "mixed agreement"),
               ("perplexity", "perplexity of patient text"), ("train_s", "distillation s")]
    json_path, md_path = write_results("distill", "cpu", {**run_meta("cpu"), **vars(args), "saved": str(out / "model")},
                                       rows, columns, note=f"Default patient, {len(held_out)} held-out responses "
                                       f"({rows[0]['tokens']} tokens), teacher-forced; batch {args.batch_size}, "
                                       f"lr {args.lr}.")
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
