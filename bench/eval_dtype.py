"""float32 against bfloat16 for steered generation on the quickstart's held-out prompts: the default patient
steered by the bundled positivity doctor (beta 1), in each dtype, in one run:

  speed      tokens/s of fastdoctor.generate (top-p 0.9, temperature 1, --samples per prompt, batches of 64),
             the patient alone and steered
  VADER      mean +- SE of the steered samples (the same seeds in both dtypes), and of the patient alone; and
             the bf16 - fp32 gap paired by prompt (per-prompt mean over its samples, then mean +- SE over
             prompts: sampled replies diverge after their first differing token, so the prompt is the unit
             that the two dtypes share)
  agreement  greedy agreement: the float32 steered greedy replies are fed back teacher-forced, and at each of
             their tokens the bfloat16 models' mixed argmax is compared with the float32 token (a per-token
             rate: free-running sequences diverge after their first difference, which says little)

The bar for making bfloat16 the default: agreement >= 95% and VADER within one SE of float32.

    python bench/eval_dtype.py [--prompts 45] [--samples 8] [--threads 2] [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse

import torch

import fastdoctor
from fastdoctor import quality, shared_base
from fastdoctor.doctors import bundled_doctor
from fastdoctor.llmdoctor.data import bundled_preferences
from fastdoctor.llmdoctor.doctor import load_doctor
from fastdoctor.sequences import pack_sequences
from common import add_options, run_meta, start, write_results

MAX_NEW_TOKENS = 48


@torch.no_grad()
def greedy_agreement(patient, doctor_lm, completions: quality.Completions, beta: float) -> tuple[float, int]:
    """The share of the given replies' tokens that argmax(log p_patient + beta log p_doctor) reproduces when
    fed the reply so far (teacher forcing)."""
    agree = total = 0
    for i, per_prompt in enumerate(completions.tokens):
        reply = per_prompt[0]
        if not reply:
            continue
        batch = pack_sequences([torch.tensor(completions.prompt_ids[i])], [torch.tensor(reply)])
        width = batch.response_ids.shape[1]
        both = shared_base.teacher_forced_logits(patient, [doctor_lm], batch)
        mixed = sum(w * torch.log_softmax(z[:, -width - 1:-1].float(), dim=-1) for w, z in zip((1.0, beta), both))
        hits = (mixed.argmax(-1) == batch.response_ids) & batch.response_mask
        agree += int(hits.sum())
        total += int(batch.response_mask.sum())
    return agree / max(total, 1), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=45, help="held-out prompts (default: all 45)")
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--samples", type=int, default=8, help="sampled replies per prompt and dtype")
    add_options(parser, quick="4 prompts, 8 new tokens", threads=2)
    args = parser.parse_args()
    start(args)
    prompts = [p.prompt for p in bundled_preferences("test")][: 4 if args.quick else args.prompts]
    new_tokens = 8 if args.quick else MAX_NEW_TOKENS
    sampling = dict(samples=2 if args.quick else args.samples, seed=0, max_new_tokens=new_tokens, temperature=1.0,
                    top_p=0.9)
    rows, greedy, per_prompt = [], {}, {}
    models = {}
    for dtype_label in ("float32", "bfloat16"):
        dtype = getattr(torch, dtype_label)
        patient, tokenizer = fastdoctor.load_model("default", dtype=dtype, device=args.device)
        doctor = load_doctor(bundled_doctor("positivity"), patient=patient, tokenizer=tokenizer).lm
        models[dtype_label] = (patient, doctor)
        with torch.inference_mode():
            alone = quality.sample_completions(patient, tokenizer, prompts, **sampling)
            steered = quality.sample_completions(patient, tokenizer, prompts, doctors=[doctor], betas=[args.beta],
                                                  **sampling)
            greedy[dtype_label] = quality.sample_completions(
                patient, tokenizer, prompts, doctors=[doctor], betas=[args.beta], samples=1, seed=0,
                max_new_tokens=new_tokens, temperature=0.0, top_p=1.0)
        base_row = quality.summarise("patient alone", alone, patient)
        row = quality.summarise("steered", steered, patient, baseline_scores=base_row["scores"])
        per = sampling["samples"]
        per_prompt[dtype_label] = [sum(row["scores"][i * per:(i + 1) * per]) / per for i in range(len(prompts))]
        rows.append({"dtype": dtype_label, "alone_tok_s": base_row["tokens_per_s"],
                     "steered_tok_s": row["tokens_per_s"], "alone_vader": base_row["reward"],
                     "alone_vader_se": base_row["reward_se"], "steered_vader": row["reward"],
                     "steered_vader_se": row["reward_se"], "win_rate": row["win_rate"],
                     "distinct_2": row["distinct_2"], "perplexity": row["perplexity"]})
        print(f"{dtype_label}: steered {row['tokens_per_s']:.1f} tok/s, VADER {row['reward']:.3f} +- "
              f"{row['reward_se']:.3f}; alone {base_row['tokens_per_s']:.1f} tok/s", flush=True)
    patient16, doctor16 = models["bfloat16"]
    agreement, counted = greedy_agreement(patient16, doctor16, greedy["float32"], args.beta)
    rows[1]["greedy_agreement"] = agreement
    rows[1]["speedup"] = rows[1]["steered_tok_s"] / rows[0]["steered_tok_s"]
    rows[1]["vader_gap_in_se"] = abs(rows[1]["steered_vader"] - rows[0]["steered_vader"]) / rows[0]["steered_vader_se"]
    gaps = [b - a for a, b in zip(per_prompt["float32"], per_prompt["bfloat16"])]
    gap, gap_se = quality.mean_and_standard_error(gaps)
    rows[1]["paired_gap"], rows[1]["paired_gap_se"] = gap, gap_se
    print(f"bfloat16 greedy agreement with float32: {agreement:.3f} over {counted} tokens; steered speed-up "
          f"{rows[1]['speedup']:.2f}x; VADER gap {rows[1]['vader_gap_in_se']:.2f} SE; paired by prompt "
          f"{gap:+.3f} +- {gap_se:.3f}", flush=True)
    columns = [("dtype", "dtype"), ("steered_tok_s", "steered tok/s"), ("alone_tok_s", "patient alone tok/s"),
               ("speedup", "steered speed-up vs fp32"), ("steered_vader", "steered VADER"),
               ("steered_vader_se", "± SE"), ("vader_gap_in_se", "VADER gap / fp32 SE"),
               ("paired_gap", "bf16 − fp32 VADER, paired by prompt"), ("paired_gap_se", "± SE"),
               ("alone_vader", "alone VADER"), ("win_rate", "win rate"), ("distinct_2", "distinct-2"),
               ("perplexity", "patient perplexity"), ("greedy_agreement", "greedy agreement with fp32")]
    meta = run_meta(args.device, prompts=len(prompts), samples=sampling["samples"], new_tokens=new_tokens,
                    beta=args.beta,
                    doctor="bundled:positivity", greedy_tokens=counted, quick=args.quick)
    write_results("dtype_quality", args.device, meta, rows, columns, out=args.out, note=(
        f"Default patient + the bundled positivity doctor (beta {args.beta}), {len(prompts)} held-out prompts x "
        f"{sampling['samples']} samples (top-p 0.9, temperature 1, same seeds per dtype), {new_tokens} new tokens, "
        f"batches of 64. Greedy "
        f"agreement: the bf16 mixed argmax against the fp32 greedy replies, teacher-forced, over {counted} tokens."))


if __name__ == "__main__":
    main()
