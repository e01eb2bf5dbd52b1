"""TARo evaluation on the bundled reasoning problems, and the `fastdoctor taro ...` commands.

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

import json
import math
import pathlib
import sys
import time
from collections.abc import Sequence

import torch

# About 1.3x the longest gold solution of each level; level 0 (gold ~15 tokens) gets room for the patient's
# usual preamble (measured on the 60 held-out level-0 problems: base 0.08 at 64 tokens, 0.10 at 96).
MAX_NEW_TOKENS = {0: 96, 1: 48, 2: 80, 3: 160, 4: 256}


def eval_subset(problems, per_level: int) -> list:
    """The first `per_level` problems of each level, in file order (a fixed, recorded subset)."""
    out, seen = [], {}
    for problem in problems:
        if seen.get(problem.level, 0) < per_level:
            out.append(problem)
            seen[problem.level] = seen.get(problem.level, 0) + 1
    return out


def left_pad(rows: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(r.numel() for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros(len(rows), width, dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, width - r.numel():] = r
        mask[i, width - r.numel():] = 1
    return ids, mask


@torch.no_grad()
def greedy_continuations(variant: dict, patient, tokenizer, prompts: Sequence[torch.Tensor], max_new_tokens: int, *,
                         rm=None, router=None) -> list[dict]:
    """Greedy continuations of one batch of prompt ids under one variant ({'kind': 'base' | 'genarm' | 'router' |
    'rm', 'alpha': a'}): per prompt {'token_ids', 'text', 'alpha' (router only)}, cut after the first EOS."""
    from .generate import generate
    from .taro import _pad_id

    pad_id = _pad_id(tokenizer)
    device = next(patient.parameters()).device
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    common = dict(attention_mask=mask, temperature=0.0, max_new_tokens=max_new_tokens,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id)
    trace: list[torch.Tensor] = []
    kind = variant["kind"]
    if kind == "base":
        out = generate(patient, ids, **common)
    elif kind == "rm":
        out = generate(rm, ids, **common)
    elif kind == "genarm":
        out = generate(patient, ids, doctors=[rm], alpha=1.0, betas=[variant["alpha"]], **common)
    elif kind == "router":
        out = generate(patient, ids, doctors=[rm], router=router, alpha_trace=trace, **common)
    else:
        raise ValueError(f"variant: unknown kind {kind!r}")
    new = out[:, ids.shape[1]:].cpu()
    alphas = torch.stack(trace, dim=1).cpu() if trace else None
    results = []
    for row in range(len(prompts)):
        tokens = new[row].tolist()
        length = tokens.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in tokens else len(tokens)
        result = {"token_ids": tokens[:length], "text": tokenizer.decode(tokens[:length], skip_special_tokens=True)}
        if alphas is not None:
            result["alpha"] = [round(float(a), 4) for a in alphas[row, :length]]
        results.append(result)
    return results


def decode(variant: dict, patient, tokenizer, problems, *, rm=None, router=None, batch_size: int = 20,
           max_new_tokens: dict | None = None) -> list[dict]:
    """Greedy solutions of `problems` under one variant; one record per problem (text, extracted answer,
    correct, new tokens, and the alpha trace with its token ids for the router)."""
    from .reasoning import chat_prompt, extract_answer, is_correct
    from .taro import encode

    limits = max_new_tokens or MAX_NEW_TOKENS
    records = []
    for level in sorted({p.level for p in problems}):
        group = [p for p in problems if p.level == level]
        for first in range(0, len(group), batch_size):
            chunk = group[first: first + batch_size]
            prompts = [encode(tokenizer, chat_prompt(tokenizer, p.question)) for p in chunk]
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
    from fractions import Fraction

    from .reasoning import check_step, find_equations

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
    from .taro import encode, step_context

    records = []
    for first in range(0, len(pairs), batch_size):
        chunk = pairs[first: first + batch_size]
        prompts = [encode(tokenizer, step_context(tokenizer, p)) for p in chunk]
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
    from .reasoning import load_step_pairs

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
    from .reasoning import load_problems

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
        alpha = record["alpha"][:max_tokens]
        tokens = [tokenizer.decode([t]) for t in record["token_ids"][:max_tokens]]
        axis.bar(range(len(alpha)), alpha, color=["tab:red" if any(c.isdigit() for c in t) else "tab:blue"
                                                    for t in tokens])
        axis.set_ylim(0, 1)
        axis.set_xlim(-1, max(len(alpha), 10))
        axis.set_ylabel("alpha (RM weight)")
        axis.set_xticks(range(len(tokens)))
        axis.set_xticklabels([t.replace("\n", "\\n") for t in tokens], rotation=90, fontsize=7)
        axis.set_title(f"{record['id']} (level {record['level']}, gold {record['answer']}, predicted "
                       f"{record['predicted']}, {'correct' if record['correct'] else 'wrong'}); red = digit tokens",
                       fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


# ------------------------------------------------------------------------------------------------ the CLI


def _load_base(args):
    import transformers

    from .models import load_model

    transformers.logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    return load_model(args.patient, device=args.device)


def _cmd_train_rm(args) -> int:
    from . import taro
    from .reasoning import load_step_pairs
    from .train import TrainConfig

    patient, tokenizer = _load_base(args)
    pairs = load_step_pairs("train")[: args.limit or None]
    eval_pairs = load_step_pairs("test")[: args.eval_limit if args.eval_limit > 0 else None] if args.eval_limit else []
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
                         lr=args.lr, warmup_steps=args.warmup_steps, log_every=args.log_every,
                         checkpoint_every=args.checkpoint_every, seed=args.seed, autocast=args.autocast)
    summary = taro.train_reward_model(patient, tokenizer, args.out, pairs=pairs, eval_pairs=eval_pairs, config=config,
                                      beta_r=args.beta_r, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
                                      lora_layers=args.lora_layers, work=args.work, resume=not args.no_resume,
                                      eval_before=not args.no_eval_before,
                                      info={"patient": args.patient})
    before, after = summary["held_out_before"], summary["held_out_after"]
    if before and after:
        print(f"[taro] held-out pair accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f} "
              f"({after['pairs']} pairs; margin {before['margin']:.2f} -> {after['margin']:.2f})")
    elif after:
        print(f"[taro] held-out pair accuracy {after['accuracy']:.3f} ({after['pairs']} pairs; margin "
              f"{after['margin']:.2f})")
    print(f"[taro] wrote the reward model to {args.out}")
    return 0


def _cmd_train_router(args) -> int:
    from . import taro
    from .models import logits_width
    from .reasoning import load_problems
    from .train import TrainConfig

    patient, tokenizer = _load_base(args)
    rm, _ = taro.load_reward_model(args.rm, tokenizer=tokenizer, device=args.device)
    if logits_width(rm) != logits_width(patient):
        raise SystemExit(f"--rm: emits {logits_width(rm)} logits per token, the base {logits_width(patient)}")
    out = pathlib.Path(args.out)
    cache_dir = pathlib.Path(args.cache or out.with_name(out.name + ".cache"))
    problems = load_problems("train")[: args.limit or None]
    cache = taro.build_router_cache(patient, rm, tokenizer, problems, cache_dir / "train", batch_size=args.cache_batch)
    eval_cache = None
    if args.eval_per_level:
        held_out = eval_subset(load_problems("test"), args.eval_per_level)
        eval_cache = taro.build_router_cache(patient, rm, tokenizer, held_out, cache_dir / "test",
                                             batch_size=args.cache_batch)
    del patient, rm  # the cache is all router training reads
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                         log_every=args.log_every, checkpoint_every=args.checkpoint_every, seed=args.seed,
                         autocast=args.autocast)
    summary = taro.train_router(cache, out, k=args.k, embed_dim=args.embed_dim, hidden=args.hidden,
                                entropy_weight=args.entropy_weight, config=config, tokenizer=tokenizer, work=args.work,
                                resume=not args.no_resume, eval_cache=eval_cache,
                                info={"patient": args.patient, "rm": str(args.rm)})
    if summary["held_out_after"]:
        nll = summary["held_out_after"]["nll"]
        print("[taro] held-out NLL/token: " + ", ".join(f"{k} {v['all']:.4f}" for k, v in nll.items()))
    print(f"[taro] wrote the router to {out}")
    return 0


def _cmd_eval(args) -> int:
    from . import taro

    patient, tokenizer = _load_base(args)
    rm = router = None
    if args.rm:
        rm, _ = taro.load_reward_model(args.rm, tokenizer=tokenizer, device=args.device)
    if args.router:
        if rm is None:
            raise SystemExit("--router needs --rm (the router mixes the base with the reward model)")
        from .models import logits_width

        router = taro.load_router(args.router, vocab_size=logits_width(patient), tokenizer=tokenizer,
                                  device=args.device)
    limits = dict(MAX_NEW_TOKENS)
    if args.max_new_tokens:
        limits = {lv: args.max_new_tokens for lv in limits}
    results = evaluate(patient, tokenizer, rm=rm, router=router, per_level=args.per_level,
                       genarm_alphas=args.genarm_alpha or (0.25, 0.5, 1.0), batch_size=args.batch_size,
                       max_new_tokens=limits)
    results.update({"patient": args.patient, "rm": args.rm, "router": args.router})
    print(markdown_table(results))
    if args.next_step:
        results["next_step"] = evaluate_next_steps(patient, tokenizer, rm=rm, router=router,
                                                   genarm_alphas=args.genarm_alpha or (0.25, 0.5, 1.0),
                                                   batch_size=args.batch_size, max_new_tokens=args.next_step_tokens)
        print(markdown_table(results["next_step"]))
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        tmp.replace(out)
        if router is not None and args.plot:
            records = next(v["records"] for v in results["variants"] if v["kind"] == "router")
            plot_alpha_traces(records, tokenizer, args.plot)
        print(f"[taro] wrote {out}")
    return 0


def add_cli_commands(sub) -> None:
    """Adds `fastdoctor taro {train-rm, train-router, eval}` to the main parser's subcommands."""
    taro_parser = sub.add_parser("taro", help="TARo: train the step-wise reward model and the router, evaluate")
    commands = taro_parser.add_subparsers(dest="taro_command", required=True)

    def common(p, *, training: bool):
        p.add_argument("--patient", default="default", help="base model: HF folder or 'default' (SmolLM2-135M)")
        p.add_argument("--device", default="cpu")
        p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
        if training:
            p.add_argument("--steps", type=int, required=True, help="optimizer steps")
            p.add_argument("--batch-size", type=int, default=8)
            p.add_argument("--warmup-steps", type=int, default=10)
            p.add_argument("--log-every", type=int, default=5)
            p.add_argument("--checkpoint-every", type=int, default=25)
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--work", default=None, help="checkpoints and logs (default: <out>.train); resumable")
            p.add_argument("--no-resume", action="store_true", help="start over even if --work has a checkpoint")
            p.add_argument("--limit", type=int, default=0, help="train on the first N examples only (0: all)")
            p.add_argument("--autocast", default="auto", choices=["auto", "bf16", "none"],
                           help="bf16 autocast (auto: on CUDA only; bf16 also speeds CPUs with AMX)")

    rm = commands.add_parser("train-rm", help="train the step-wise reward model (GenARM loss on step pairs)")
    common(rm, training=True)
    rm.add_argument("--out", required=True, help="the reward model's folder (an HF folder, written atomically)")
    rm.add_argument("--beta-r", type=float, default=0.05, help="Bradley-Terry scale beta_r")
    rm.add_argument("--lr", type=float, default=5e-4)
    rm.add_argument("--micro-batch-size", type=int, default=0)
    rm.add_argument("--lora-rank", type=int, default=8)
    rm.add_argument("--lora-alpha", type=int, default=16)
    rm.add_argument("--lora-layers", type=int, default=0, help="LoRA on the last N decoder layers only (0: all)")
    rm.add_argument("--no-eval-before", action="store_true",
                    help="skip scoring the held-out pairs before training (the untrained RM is the patient)")
    rm.add_argument("--eval-limit", type=int, default=-1,
                    help="held-out pairs scored before/after (-1: all 120, 0: none)")
    rm.set_defaults(func=_cmd_train_rm)

    router = commands.add_parser("train-router", help="train the token-level router (base and RM frozen)")
    common(router, training=True)
    router.add_argument("--rm", required=True, help="the reward model folder (from train-rm)")
    router.add_argument("--out", required=True, help="the router's folder (safetensors + JSON, written atomically)")
    router.add_argument("--cache", default=None, help="where the frozen models' outputs go (default: <out>.cache)")
    router.add_argument("--cache-batch", type=int, default=8)
    router.add_argument("--k", type=int, default=20, help="top-K candidates per model")
    router.add_argument("--embed-dim", type=int, default=32)
    router.add_argument("--hidden", type=int, default=128)
    router.add_argument("--entropy-weight", type=float, default=0.0,
                        help="weight of the mean Bernoulli entropy of alpha added to the NLL (> 0: decisive alpha)")
    router.add_argument("--lr", type=float, default=2e-3)
    router.add_argument("--eval-per-level", type=int, default=20,
                        help="held-out problems per level for the NLL report (0: none)")
    router.set_defaults(func=_cmd_train_router)

    ev = commands.add_parser("eval", help="greedy accuracy on held-out problems: base, GenARM sweep, router, RM")
    common(ev, training=False)
    ev.add_argument("--rm", default=None)
    ev.add_argument("--router", default=None)
    ev.add_argument("--per-level", type=int, default=20)
    ev.add_argument("--genarm-alpha", type=float, action="append", default=[],
                    help="fixed GenARM weights a' (repeatable; default 0.25, 0.5, 1)")
    ev.add_argument("--batch-size", type=int, default=20)
    ev.add_argument("--max-new-tokens", type=int, default=0, help="one limit for every level (0: per-level defaults)")
    ev.add_argument("--next-step", action="store_true",
                    help="also score the next step on the held-out step pairs' contexts")
    ev.add_argument("--next-step-tokens", type=int, default=40, help="new tokens per next-step continuation")
    ev.add_argument("--out", default=None, help="results JSON")
    ev.add_argument("--plot", default=None, help="alpha-trace PNG (with --router and --out)")
    ev.set_defaults(func=_cmd_eval)
