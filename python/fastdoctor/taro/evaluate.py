"""TARo evaluation on the bundled reasoning problems.

On held-out problems (a fixed subset of reasoning_problems_test.jsonl: the first `per_level` of each level),
greedy decoding, final answers checked by reasoning.is_correct, the variants compared are:

    base               the patient alone
    genarm a'=x        z_base + x z_rm, fixed (GenARM; the convex mix at a = x / (1 + x); greedy, so no
                       temperature matching is needed: the argmax does not depend on it)
    taro router        z = (1 - a_t) z_base + a_t z_rm with a_t from the learned router (fused gating op)
    rm alone           the reward model alone

Accuracy is reported per level with its standard error sqrt(p (1 - p) / n). evaluate_next_steps scores the
local task the reward model was trained on: given the chat prompt and the correct earlier steps of a held-out
step pair, is the first equation of the greedy continuation exact and equal to the correct step's result?
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from fractions import Fraction

import torch

from .. import tokens
from ..generate import generate
from ..sequences import left_pad
from .reasoning import chat_prompt, check_step, extract_answer, find_equations, is_correct, load_problems, load_step_pairs
from .reward_model import step_context
from .router import RoutedSteering

# About 1.3x the longest gold solution of each level; level 0 (gold ~15 tokens) gets room for the patient's
# usual preamble (measured on the 60 held-out level-0 problems: base 0.08 at 64 tokens, 0.10 at 96).
# The one-shot in-band levels answer in the worked example's short form (~15 and ~35 tokens).
MAX_NEW_TOKENS = {0: 96, 1: 48, 2: 80, 3: 160, 4: 256, 5: 48, 6: 64}


def eval_subset(problems, per_level: int) -> list:
    """The first `per_level` problems of each level, in file order (a fixed, recorded subset)."""
    out, seen = [], {}
    for problem in problems:
        if seen.get(problem.level, 0) < per_level:
            out.append(problem)
            seen[problem.level] = seen.get(problem.level, 0) + 1
    return out


@torch.no_grad()
def greedy_continuations(variant: dict, patient, tokenizer, prompts: Sequence[torch.Tensor], max_new_tokens: int, *,
                         rm=None, router=None) -> list[dict]:
    """Greedy continuations of one batch of prompt ids under one variant ({'kind': 'base' | 'genarm' | 'router' |
    'rm', 'alpha': a'}): per prompt {'token_ids', 'text', 'alpha' (router only)}, cut after the first EOS."""
    pad_id = tokens.pad_id(tokenizer)
    device = next(patient.parameters()).device
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    common = dict(attention_mask=mask, temperature=0.0, max_new_tokens=max_new_tokens,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id)
    steering = RoutedSteering(router) if variant["kind"] == "router" else None
    kind = variant["kind"]
    if kind == "base":
        out = generate(patient, ids, **common)
    elif kind == "rm":  # the reward model alone: weight 0 on the base (an adapter RM runs in its forward)
        out = generate(patient, ids, doctors=[rm], alpha=0.0, betas=[1.0], **common)
    elif kind == "genarm":
        out = generate(patient, ids, doctors=[rm], alpha=1.0, betas=[variant["alpha"]], **common)
    elif kind == "router":
        out = generate(patient, ids, doctors=[rm], router=steering, **common)
    else:
        raise ValueError(f"variant: unknown kind {kind!r}")
    new = out[:, ids.shape[1]:].cpu()
    alphas = torch.stack(steering.trace, dim=1).cpu() if steering is not None and steering.trace else None
    results = []
    for row in range(len(prompts)):
        ids_row = new[row].tolist()
        length = ids_row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in ids_row else len(ids_row)
        result = {"token_ids": ids_row[:length], "text": tokenizer.decode(ids_row[:length], skip_special_tokens=True)}
        if alphas is not None:
            result["alpha"] = [round(float(a), 4) for a in alphas[row, :length]]
        results.append(result)
    return results


def decode(variant: dict, patient, tokenizer, problems, *, rm=None, router=None, batch_size: int = 20,
           max_new_tokens: dict | None = None) -> list[dict]:
    """Greedy solutions of `problems` under one variant; one record per problem (text, extracted answer,
    correct, new tokens, and the alpha trace with its token ids for the router)."""
    limits = max_new_tokens or MAX_NEW_TOKENS
    records = []
    for level in sorted({p.level for p in problems}):
        group = [p for p in problems if p.level == level]
        for first in range(0, len(group), batch_size):
            chunk = group[first: first + batch_size]
            prompts = [tokens.encode(tokenizer, chat_prompt(tokenizer, p.question, p.example)) for p in chunk]
            outputs = greedy_continuations(variant, patient, tokenizer, prompts, limits[level], rm=rm, router=router)
            for problem, output in zip(chunk, outputs):
                text = output["text"]
                record = {"id": problem.id, "level": level, "answer": problem.answer, "predicted": extract_answer(text),
                          "correct": is_correct(text, problem.answer), "new_tokens": len(output["token_ids"]),
                          "text": text}
                if "alpha" in output:
                    record["alpha"] = output["alpha"]
                    record["token_ids"] = output["token_ids"]
                records.append(record)
    return records


def next_step_correct(continuation: str, chosen: str) -> bool:
    """The continuation's first equation 'a op b = c' is arithmetically exact and its result c is the chosen
    (correct) step's result."""
    found, gold = find_equations(continuation), find_equations(chosen)
    if not found or not gold:
        return False
    left, right = found[0]
    try:
        same = Fraction(right.replace(",", "")) == Fraction(gold[-1][1].replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return False
    return same and check_step(f"{left} = {right}", require_equation=True)


def decode_next_steps(variant: dict, patient, tokenizer, pairs, *, rm=None, router=None, batch_size: int = 20,
                      max_new_tokens: int = 40) -> list[dict]:
    """Greedy continuations of the step pairs' contexts (chat prompt + the correct earlier steps), scored by
    next_step_correct against the chosen step: the local, in-distribution task the reward model was trained on."""
    records = []
    for first in range(0, len(pairs), batch_size):
        chunk = pairs[first: first + batch_size]
        prompts = [tokens.encode(tokenizer, step_context(tokenizer, p)) for p in chunk]
        outputs = greedy_continuations(variant, patient, tokenizer, prompts, max_new_tokens, rm=rm, router=router)
        for index, (pair, output) in enumerate(zip(chunk, outputs)):
            records.append({"id": f"{pair.problem_id}/{pair.step_index}", "level": pair.level,
                            "correct": next_step_correct(output["text"], pair.chosen), "chosen": pair.chosen,
                            "text": output["text"], "new_tokens": len(output["token_ids"]),
                            **({"alpha": output["alpha"], "token_ids": output["token_ids"]} if "alpha" in output else {})})
    return records


def _unique_steps(pairs):
    """One pair per (problem, step): pairs that share a context differ only in the rejected step."""
    seen, out = set(), []
    for pair in pairs:
        key = (pair.problem_id, pair.step_index, pair.initial_reason_steps)
        if key not in seen:
            seen.add(key)
            out.append(pair)
    return out


def accuracy_table(records: list[dict]) -> dict:
    """{level: {accuracy, se, n, correct}} plus 'all'."""
    out = {}
    levels = sorted({r["level"] for r in records})
    for key, rows in [(str(lv), [r for r in records if r["level"] == lv]) for lv in levels] + [("all", records)]:
        n = len(rows)
        correct = sum(r["correct"] for r in rows)
        p = correct / n if n else float("nan")
        out[key] = {"n": n, "correct": correct, "accuracy": round(p, 4),
                    "se": round(math.sqrt(p * (1 - p) / n), 4) if n else None}
    return out


def variants_for(genarm_alphas: Sequence[float], router, rm) -> list[dict]:
    variants = [{"name": "base", "kind": "base"}]
    if rm is not None:
        variants += [{"name": f"genarm a'={a:g}", "kind": "genarm", "alpha": float(a),
                      "convex_alpha": round(a / (1 + a), 4)} for a in genarm_alphas]
        if router is not None:
            variants.append({"name": "taro router", "kind": "router"})
        variants.append({"name": "rm alone", "kind": "rm"})
    return variants


def evaluate_next_steps(patient, tokenizer, *, rm=None, router=None, pairs=None,
                        genarm_alphas: Sequence[float] = (0.25, 0.5, 1.0), batch_size: int = 20,
                        max_new_tokens: int = 40, progress: bool = True) -> dict:
    """Next-step accuracy on the held-out step pairs' contexts (one per distinct context), every variant."""
    pairs = _unique_steps(pairs if pairs is not None else load_step_pairs("test"))
    results = []
    for variant in variants_for(genarm_alphas, router, rm):
        started = time.time()
        records = decode_next_steps(variant, patient, tokenizer, pairs, rm=rm, router=router, batch_size=batch_size,
                                    max_new_tokens=max_new_tokens)
        table = accuracy_table(records)
        results.append({**variant, "accuracy": table, "seconds": round(time.time() - started, 1), "records": records})
        if progress:
            print(f"[taro-eval] next step, {variant['name']:>16}: all={table['all']['accuracy']:.3f}"
                  f"±{table['all']['se']:.3f}", file=sys.stderr, flush=True)
    return {"contexts": len(pairs), "max_new_tokens": max_new_tokens,
            "criterion": "the continuation's first equation is exact and gives the chosen step's result",
            "variants": results}


def evaluate(patient, tokenizer, *, rm=None, router=None, problems=None, per_level: int = 20,
             genarm_alphas: Sequence[float] = (0.25, 0.5, 1.0), batch_size: int = 20,
             max_new_tokens: dict | None = None, progress: bool = True) -> dict:
    """Runs every variant on the held-out subset; returns {'subset', 'variants': [{name, accuracy, records,
    seconds}]}."""
    problems = eval_subset(problems if problems is not None else load_problems("test"), per_level)
    results = []
    for variant in variants_for(genarm_alphas, router, rm):
        started = time.time()
        records = decode(variant, patient, tokenizer, problems, rm=rm, router=router, batch_size=batch_size,
                         max_new_tokens=max_new_tokens)
        seconds = time.time() - started
        table = accuracy_table(records)
        results.append({**variant, "accuracy": table, "seconds": round(seconds, 1), "records": records})
        if progress:
            levels = " ".join(f"L{k}={v['accuracy']:.2f}" for k, v in table.items() if k != "all")
            print(f"[taro-eval] {variant['name']:>16}: all={table['all']['accuracy']:.3f}±{table['all']['se']:.3f} "
                  f"{levels} ({seconds:.0f} s)", file=sys.stderr, flush=True)
    return {"subset": {"split": "test", "per_level": per_level, "ids": [p.id for p in problems]},
            "max_new_tokens": {str(k): v for k, v in (max_new_tokens or MAX_NEW_TOKENS).items()},
            "decoding": "greedy (temperature 0); temperature matching of GenARM vs TARo does not change an argmax",
            "variants": results}


def markdown_table(results: dict) -> str:
    variants = results["variants"]
    levels = [k for k in variants[0]["accuracy"] if k != "all"]
    header = "| variant | " + " | ".join(f"level {lv}" for lv in levels) + " | all | s |"
    lines = [header, "|" + "---|" * (len(levels) + 3)]
    for v in variants:
        cells = [f"{v['accuracy'][lv]['accuracy']:.2f} ± {v['accuracy'][lv]['se']:.2f}" for lv in levels + ["all"]]
        lines.append(f"| {v['name']} | " + " | ".join(cells) + f" | {v['seconds']:.0f} |")
    return "\n".join(lines)


def _alpha_panel(axis, record: dict, tokenizer, max_tokens: int, title: str) -> None:
    """One bar per generated token: the router's alpha, the token written underneath, digit tokens in red."""
    alpha = record["alpha"][:max_tokens]
    pieces = [tokenizer.decode([t]) for t in record["token_ids"][:max_tokens]]
    axis.bar(range(len(alpha)), alpha, color=["tab:red" if any(c.isdigit() for c in t) else "tab:blue" for t in pieces])
    axis.set_ylim(0, 1)
    axis.set_xlim(-1, max(len(alpha), 10))
    axis.set_ylabel("alpha (RM weight)")
    axis.set_xticks(range(len(pieces)))
    axis.set_xticklabels([t.replace("\n", "\\n") for t in pieces], rotation=90, fontsize=7)
    axis.set_title(title, fontsize=9)


def plot_alpha_traces(records: list[dict], tokenizer, path, *, count: int = 4, max_tokens: int = 80) -> None:
    """One panel per solution: the router's alpha per generated token, with the tokens written underneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = []
    for level in sorted({r["level"] for r in records}):  # one per level, a correct one where there is one
        rows = [r for r in records if r["level"] == level and "alpha" in r]
        rows.sort(key=lambda r: not r["correct"])
        chosen += rows[:1]
    chosen = chosen[:count]
    if not chosen:
        return
    figure, axes = plt.subplots(len(chosen), 1, figsize=(16, 3.2 * len(chosen)), squeeze=False)
    for axis, record in zip(axes[:, 0], chosen):
        _alpha_panel(axis, record, tokenizer, max_tokens,
                     f"{record['id']} (level {record['level']}, gold {record['answer']}, predicted "
                     f"{record['predicted']}, {'correct' if record['correct'] else 'wrong'}); red = digit tokens")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


# ------------------------------------------------------------------------------------------------ paired tests


def mcnemar(first: Sequence[bool], second: Sequence[bool]) -> dict:
    """McNemar's exact test of two methods' correctness on the same problems: only the discordant problems
    count (first right and second wrong, or the reverse), and under the null each is a fair coin. Returns the
    two discordant counts and the two-sided p-value (binomial, doubled one tail, capped at 1)."""
    if len(first) != len(second):
        raise ValueError(f"mcnemar: {len(first)} against {len(second)} results; pair them on the same problems")
    first_only = sum(1 for a, b in zip(first, second) if a and not b)
    second_only = sum(1 for a, b in zip(first, second) if b and not a)
    n = first_only + second_only
    tail = sum(math.comb(n, k) for k in range(min(first_only, second_only) + 1)) / 2 ** n if n else 1.0
    return {"first_only": first_only, "second_only": second_only, "p": float(f"{min(1.0, 2 * tail):.3g}")}


def paired_comparisons(variants: list[dict], *, against: Sequence[str]) -> list[dict]:
    """The router against each named variant, per level and over all, on the same problems (records in the
    same order: every variant decodes the same list)."""
    router = next(v for v in variants if v["kind"] == "router")
    ids = [r["id"] for r in router["records"]]
    levels = sorted({r["level"] for r in router["records"]})
    out = []
    for name in against:
        other = next(v for v in variants if v["name"] == name)
        if ids != [r["id"] for r in other["records"]]:
            raise ValueError(f"paired_comparisons: {name} decoded other problems than the router")
        for level in [*levels, "all"]:
            keep = [i for i, r in enumerate(router["records"]) if level == "all" or r["level"] == level]
            test = mcnemar([router["records"][i]["correct"] for i in keep], [other["records"][i]["correct"] for i in keep])
            out.append({"against": name, "level": str(level), "n": len(keep), "router_only": test["first_only"],
                        "other_only": test["second_only"], "p": test["p"]})
    return out


def best_fixed(variants: list[dict]) -> str:
    """The name of the fixed-alpha GenARM variant with the highest overall accuracy (chosen on the very data
    it is compared on, which favours it over the router)."""
    fixed = [v for v in variants if v["kind"] == "genarm"]
    return max(fixed, key=lambda v: v["accuracy"]["all"]["accuracy"])["name"]


def first_step_scores(solutions: dict, problems) -> dict:
    """Next-step accuracy on the held-out problems themselves, for levels whose solution is one step: the
    context of their first step is the bare prompt, so the greedy solution already is the continuation, and
    its first equation is scored as evaluate_next_steps scores one (200 problems a level, not 30 pairs)."""
    first = {p.id: p.steps[0] for p in problems}
    out = []
    for variant in solutions["variants"]:
        records = [{"id": r["id"], "level": r["level"], "correct": next_step_correct(r["text"], first[r["id"]])}
                   for r in variant["records"]]
        out.append({"name": variant["name"], "kind": variant["kind"], "accuracy": accuracy_table(records),
                    "seconds": 0.0, "records": records})
    return {"contexts": len(solutions["variants"][0]["records"]), "variants": out}


# ------------------------------------------------------------------------------------------------ out of domain


def evaluate_out_of_domain(patient, tokenizer, *, rm, router, prompts: Sequence[str],
                           genarm_alphas: Sequence[float] = (0.25, 0.5, 1.0), samples: int = 2, seed: int = 0,
                           max_new_tokens: int = 48, top_p: float = 0.9, batch_size: int = 64,
                           progress: bool = True) -> dict:
    """The router on prompts that are not math (TARo's out-of-domain claim): sampled replies (top-p, temperature
    1, the same seeds for every variant) of the base, fixed-alpha GenARM and the router, scored by the
    patient's perplexity of them, VADER, distinct-2, and the RM's weight per token (the router's mean alpha;
    a fixed a' is the convex weight a' / (1 + a'))."""
    from .. import quality

    sampling = dict(samples=samples, seed=seed, max_new_tokens=max_new_tokens, temperature=1.0, top_p=top_p,
                    batch_size=batch_size)
    rows, traces = [], None
    variants = [("base", {}, 0.0)] + [(f"genarm a'={a:g}", dict(doctors=[rm], betas=[float(a)]), a / (1 + a))
                                      for a in genarm_alphas] + [("taro router", dict(doctors=[rm]), None)]
    for name, kwargs, weight in variants:
        steering = RoutedSteering(router) if weight is None else None
        done = quality.sample_completions(patient, tokenizer, prompts, **kwargs, router=steering, **sampling)
        row = quality.summarise(name, done, patient)
        if done.alphas is not None:
            flat = [a for per_prompt in done.alphas for sample in per_prompt for a in sample]
            weight = sum(flat) / max(len(flat), 1)
            traces = done
        rows.append({"variant": name, "rm_weight": round(float(weight), 4), "vader": row["reward"],
                     "vader_se": row["reward_se"], "perplexity": row["perplexity"], "distinct_2": row["distinct_2"],
                     "tokens_per_s": row["tokens_per_s"],
                     "examples": [done.texts[i][0] for i in range(min(2, len(prompts)))]})
        if progress:
            print(f"[taro-eval] out of domain, {name:>16}: RM weight {weight:.3f}, VADER {row['reward']:.3f}"
                  f"±{row['reward_se']:.3f}, perplexity {row['perplexity']:.2f}", file=sys.stderr, flush=True)
    trace = None
    if traces is not None:  # the first prompt's first sample, for the alpha plot
        trace = {"prompt": prompts[0], "token_ids": traces.tokens[0][0], "alpha": traces.alphas[0][0]}
    return {"prompts": len(prompts), "samples": samples, "max_new_tokens": max_new_tokens, "top_p": top_p,
            "temperature": 1.0, "variants": rows, "router_trace": trace}


def plot_alpha_in_and_out_of_domain(problem: dict, positivity: dict, tokenizer, path, *, max_tokens: int = 48) -> None:
    """Two panels side by side: the router's alpha per generated token on one in-band problem (a record of
    decode) and on one positivity prompt (evaluate_out_of_domain's router_trace); digit tokens in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(18, 3.8), squeeze=False)
    titles = [f"in band: {problem['id']} (level {problem['level']}, gold {problem['answer']}, "
              f"{'correct' if problem['correct'] else 'wrong'})",
              f"out of domain: \"{positivity['prompt'][:60]}\""]
    for axis, record, title in zip(axes[0], (problem, positivity), titles):
        alpha = record["alpha"][:max_tokens]
        _alpha_panel(axis, record, tokenizer, max_tokens, f"{title}; mean alpha {sum(alpha) / max(len(alpha), 1):.2f}")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
