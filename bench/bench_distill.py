"""Doctor initialisation (METHODS.md decision 8) on the default patient, measured on held-out patient text
(the bundled positivity test responses, teacher-forced):

  - greedy agreement: how often the doctor's argmax is the patient's;
  - mixed agreement: how often argmax(log p_patient + log p_doctor) (alpha = beta = 1) keeps the patient's;
  - the doctor's perplexity of the patient's text.

Rows: untrained truncations, the small doctor before and after distillation (KL to the patient on its own
responses to the bundled train prompts), and the full-size copy. The distilled doctor is kept in the cache
for reuse (bench/eval_quality.py --small-doctor); a --quick run keeps nothing.

    python bench/bench_distill.py [--layers 15] [--keep-last 7] [--steps 120] [--lr 1e-3] [--patient-samples 4]
                                  [--device cpu|cuda] [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import functools
import pathlib
import tempfile
import time

from common import add_options, display_path, run_meta, start, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=15)
    parser.add_argument("--keep-last", type=int, default=7)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--held-out", type=int, default=45, help="held-out responses to measure on")
    parser.add_argument("--continue-from", default=None,
                        help="a distilled model folder (an earlier run's 'saved') to continue distilling")
    parser.add_argument("--patient-samples", type=int, default=0,
                        help="also distil on this many fresh patient samples per train prompt (top-p 0.95, 64 tokens)")
    parser.add_argument("--previous-steps", type=int, default=0, help="steps that folder already had (for the label)")
    add_options(parser, quick="a 4-layer doctor (first 2 + last 2), 1 step of 2 sequences from 8 train pairs (with "
                              "--patient-samples: plus 1 sample of 8 tokens for 2 prompts), 2 held-out responses, "
                              "into a temporary folder")
    args = parser.parse_args()
    start(args)
    if args.quick:
        args.layers, args.keep_last, args.steps, args.batch_size, args.held_out = 4, 2, 1, 2, 2
        args.patient_samples = min(args.patient_samples, 1)
    import transformers

    from fastdoctor.llmdoctor import distill, recipes
    from fastdoctor.llmdoctor.data import bundled_preferences
    from fastdoctor.models import cache_dir, load_model, make_doctor
    from fastdoctor.train import TrainConfig

    transformers.logging.disable_progress_bar()
    patient, tokenizer = load_model("default", device=args.device)
    held_out = distill.chat_sequences(tokenizer, bundled_preferences("test"), responses="chosen")[: args.held_out]
    rows = []

    def measure(name, lm, seconds=float("nan")):
        rows.append({"doctor": name, **distill.agreement(patient, lm, held_out), "train_s": seconds})
        print(rows[-1], flush=True)

    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         warmup_steps=max(args.steps // 20, 1), log_every=10, checkpoint_every=20,
                         seed=args.previous_steps)  # a continuation sees a fresh order of examples
    train_pairs = bundled_preferences("train")[: 8 if args.quick else None]
    sequences = distill.chat_sequences(tokenizer, train_pairs)
    if args.patient_samples:
        began = time.time()
        prompts = [p.prompt for p in train_pairs][: 2 if args.quick else None]
        sequences += distill.patient_samples(patient, tokenizer, prompts, samples=args.patient_samples,
                                             max_new_tokens=8 if args.quick else 64)
        print(f"[distill] {len(sequences)} sequences ({time.time() - began:.0f} s of sampling)", flush=True)
    tag = (f"L{args.layers}-k{args.keep_last}-s{args.previous_steps + args.steps}-lr{args.lr}"
           + (f"-ps{args.patient_samples}" if args.patient_samples else ""))
    scratch = tempfile.TemporaryDirectory() if args.quick else None  # a smoke run leaves the cache alone
    out = (pathlib.Path(scratch.name) if scratch else cache_dir()) / "distilled" / tag
    began = time.time()
    if args.continue_from:
        from fastdoctor.train import train
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(args.continue_from).to(args.device)
        measure(f"{args.layers} layers, distilled {args.previous_steps} steps", lm)
        for p in patient.parameters():
            p.requires_grad_(False)
        loss = functools.partial(distill.distill_batch_loss, lm, patient, pad_id=tokenizer.pad_token_id or 0,
                                 device=args.device)
        train(lm, sequences, loss, config, out, name="distill")
    else:
        for layers in (6, args.layers):
            measure(f"first {layers} layers, untrained", make_doctor(patient, layers))
        init = recipes.DoctorInit(kind="small", num_layers=args.layers, keep_last=args.keep_last)
        measure(f"{args.layers} layers (first {args.layers - args.keep_last} + last {args.keep_last}), untrained",
                make_doctor(patient, args.layers, keep_last=args.keep_last))
        lm = recipes.distill_small(patient, tokenizer, sequences, out, init, config)
    seconds = time.time() - began
    lm.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    measure(f"{args.layers} layers, distilled {args.previous_steps + args.steps} steps", lm, seconds)
    measure("full-size copy (30 layers)", patient)
    settings = {k: v for k, v in vars(args).items() if k not in ("device", "out", "continue_from")}
    meta = run_meta(args.device, **settings,
                    continue_from=display_path(args.continue_from) if args.continue_from else None,
                    saved="not kept (--quick)" if scratch else display_path(out / "model"))
    columns = [("doctor", "doctor"), ("greedy_agreement", "greedy agreement"), ("mixed_agreement", "mixed agreement"),
               ("perplexity", "perplexity of patient text"), ("train_s", "distillation s")]
    json_path, md_path = write_results(
        "distill" if not args.continue_from else "distill_continued", args.device, meta, rows, columns, out=args.out,
        note=f"Default patient, {len(held_out)} held-out responses ({rows[0]['tokens']} tokens), teacher-forced; "
             f"batch {args.batch_size}, lr {args.lr}; {len(sequences)} training sequences" +
             (f" (the bundled train responses plus {args.patient_samples} fresh patient samples per train prompt)"
              if args.patient_samples else "") + "; distillation s: one timed run.")
    print(f"wrote {json_path} and {md_path}")
    if scratch:
        scratch.cleanup()


if __name__ == "__main__":
    main()
