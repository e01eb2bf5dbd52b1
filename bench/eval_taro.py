"""TARo on the bundled reasoning problems, on held-out data only, every variant greedy:

  base             the patient alone
  genarm a'=x      fixed-alpha GenARM, z_base + x z_rm (the convex mix at a = x / (1 + x))
  taro router      z = (1 - a_t) z_base + a_t z_rm, a_t from the learned router (the fused gating op)
  rm alone         the reward model alone

Measurements:
  solutions        full solutions of a fixed subset (the first --per-level problems of each level of
                   reasoning_problems_test.jsonl), final answer checked by the verifier; accuracy ± s.e.
  paired tests     McNemar's exact test of the router against the base and against the best fixed alpha (picked
                   on the same problems, which favours it), per level and over all, on those same problems
  next step        the held-out step pairs' contexts (chat prompt + the correct earlier steps), one per distinct
                   context: is the first equation of the greedy continuation exact and equal to the chosen
                   step's result? (the local task the reward model was trained on); on one-step levels also
                   scored on every evaluated problem's solution, whose context is the bare prompt
  teacher-forced   on the gold solutions of the same subset: per-token NLL and greedy top-1 accuracy (overall and
                   on digit tokens) under the router and fixed convex mixes (from the frozen models' cached logits)
  out of domain    --ood-prompts positivity prompts (not math): sampled replies of base, GenARM and the router,
                   with the RM's weight per token, the patient's perplexity, VADER and distinct-2

    fastdoctor taro train-rm --out RM ...; fastdoctor taro train-router --rm RM --out ROUTER ...
    python bench/eval_taro.py --rm RM --router ROUTER [--per-level 20] [--reuse-solutions]
                              [--levels 0 --per-level 60 --name taro_eval_level0] [--device cpu|cuda] [--out DIR]
    python bench/eval_taro.py --train DIR --levels 5 6 --per-level 200 --name taro_eval_inband
                              # the in-band evaluation, end to end: --train trains the reward model and the
                              # router into DIR/rm and DIR/router by TRAIN_RM / TRAIN_ROUTER first (reused when
                              # they are there) and evaluates them
    python bench/eval_taro.py --quick   # a smoke run: without --rm/--router, an untrained copy of the patient
                                        # as the RM and a fresh, untrained taro.Router

Writes <out>/taro_eval_<hardware>.{json,md} and <out>/taro_alpha_trace_<hardware>.png; the reward model's
held-out pair accuracy and the router's training summary are copied from their saved JSON. --rm-summary writes
<out>/taro_rm_<hardware>.{json,md} instead.
"""
from __future__ import annotations

import argparse
import copy
import json
import pathlib
import tempfile

import torch

import fastdoctor
from fastdoctor import taro
from fastdoctor.taro.reasoning import load_problems, load_step_pairs
from fastdoctor.llmdoctor.data import bundled_preferences
from fastdoctor.taro.evaluate import (MAX_NEW_TOKENS, best_fixed, eval_subset, evaluate, evaluate_next_steps,
                                      evaluate_out_of_domain, first_step_scores, markdown_table, paired_comparisons,
                                      plot_alpha_in_and_out_of_domain, plot_alpha_traces)
from common import add_options, display_path, dtype_name, result_stem, run_meta, start, write_results

QUICK_TOKENS, QUICK_PAIRS = 8, 3  # a --quick run: new tokens per continuation, held-out step pairs
# The recorded recipes of --train (the bundled train split, every level; fp32 base, bf16 autocast for the RM).
TRAIN_RM = ["--beta-r", "0.5", "--lora-layers", "10", "--steps", "60", "--batch-size", "8", "--lr", "1e-3",
            "--warmup-steps", "3", "--log-every", "5", "--checkpoint-every", "15", "--autocast", "bf16"]
TRAIN_ROUTER = ["--steps", "300", "--batch-size", "8", "--lr", "2e-3", "--warmup-steps", "10", "--log-every", "25",
                "--checkpoint-every", "50"]


def train_models(folder: pathlib.Path, threads: int) -> tuple[str, str]:
    """DIR/rm and DIR/router, trained by the recorded recipes unless a finished one is already there (each
    command also resumes an interrupted run of itself)."""
    import subprocess
    import sys

    rm, router = folder / "rm", folder / "router"
    common = ["--threads", str(threads)]
    for out, command in ((rm, ["train-rm", "--out", str(rm), *TRAIN_RM]),
                         (router, ["train-router", "--rm", str(rm), "--out", str(router), *TRAIN_ROUTER])):
        if (out / ("taro_rm.json" if out == rm else "router.json")).exists():
            print(f"[taro-eval] reusing {display_path(out)}", flush=True)
            continue
        print("[taro-eval] fastdoctor taro " + " ".join(command + common), flush=True)
        subprocess.run([sys.executable, "-m", "fastdoctor.cli", "taro", *command, *common], check=True)
    return str(rm), str(router)


def teacher_forced_table(tf: dict) -> str:
    lines = ["| variant | NLL/token | top-1 | NLL/token digits | top-1 digits |", "|---|---|---|---|---|"]
    digits_nll, digits_top1 = tf.get("nll_digits", {}), tf.get("top1_digits", {})  # absent without digit tokens
    for name in tf["nll"]:
        lines.append(f"| {name} | {tf['nll'][name]['all']:.4f} | {tf['top1'][name]['all']:.4f} | "
                     f"{digits_nll.get(name, float('nan')):.4f} | {digits_top1.get(name, float('nan')):.4f} |")
    return "\n".join(lines)


def paired_table(rows: list[dict]) -> str:
    lines = ["| router vs | level | problems | router only | other only | p (McNemar, exact) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['against']} | {r['level']} | {r['n']} | {r['router_only']} | {r['other_only']} | {r['p']:.3g} |"
              for r in rows]
    return "\n".join(lines)


def ood_table(result: dict) -> str:
    lines = ["| variant | RM weight per token (mean) | VADER ± s.e. | patient perplexity | distinct-2 | tokens/s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['rm_weight']:.3f} | {r['vader']:.3f} ± {r['vader_se']:.3f} | "
              f"{r['perplexity']:.2f} | {r['distinct_2']:.3f} | {r['tokens_per_s']:.1f} |" for r in result["variants"]]
    return "\n".join(lines)


def rm_summary(args, dtype) -> None:
    """taro_rm_<hardware>.{json,md}: held-out step-pair accuracy of the patient (the untrained RM) and of each
    trained reward model (from its taro_rm.json), on all 120 held-out pairs (--quick: the first 4)."""
    patient, tokenizer = fastdoctor.load_model("default", dtype=dtype, device=args.device)
    pairs = taro.step_pair_tokens(tokenizer, load_step_pairs("test")[: 4 if args.quick else None])
    rows = [{"model": "patient (untrained RM)", **taro.pair_accuracy(patient, pairs, beta_r=1.0,
                                                                     pad_id=tokenizer.eos_token_id)}]
    for path in args.rm_summary:
        info = json.loads((pathlib.Path(path) / "taro_rm.json").read_text())["info"]
        rows.append({"model": f"RM beta_r {info['beta_r']}, LoRA r {info['lora']['rank']} on "
                              f"{info['lora'].get('layers', 'all')} layers, {info['config']['steps']} steps x "
                              f"{info['config']['batch_size']}, lr {info['config']['lr']}", **info["held_out_after"]})
    levels, errors = sorted(rows[0]["by_level"]), sorted(rows[0]["by_error_type"])
    for row in rows:  # flat columns for the table; the nested dicts stay in the JSON
        row.update({f"L{lv}": row["by_level"].get(lv) for lv in levels})
        row.update({e: row["by_error_type"].get(e) for e in errors})
    columns = ([("model", "model"), ("pairs", "pairs"), ("accuracy", "accuracy"), ("margin", "mean margin")] +
               [(f"L{lv}", f"L{lv}") for lv in levels] + [(e, e) for e in errors])
    meta = run_meta(args.device, dtype=dtype_name(dtype), reward_models=[display_path(p) for p in args.rm_summary])
    _, md_path = write_results(
        "taro_rm", args.device, meta, rows, columns, out=args.out,
        title="TARo reward model: held-out step-pair accuracy",
        note="Pair accuracy = the RM's summed log-prob of the chosen step beats the rejected one's, given chat prompt "
             f"+ earlier steps; {len(pairs)} held-out pairs (30 per level in a full run); {dtype_name(dtype)} scoring.")
    print(md_path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rm", default=None)
    parser.add_argument("--router", default=None)
    parser.add_argument("--train", default=None, type=pathlib.Path, metavar="DIR",
                        help="train the RM and router into DIR first (TRAIN_RM, TRAIN_ROUTER; reused when present)")
    parser.add_argument("--rm-summary", nargs="*", default=None, metavar="RM",
                        help="only write taro_rm_<hardware>.{json,md}: the patient's and these RMs' held-out pair "
                             "accuracy")
    parser.add_argument("--per-level", type=int, default=20)
    parser.add_argument("--levels", type=int, nargs="+", default=None,
                        help="evaluate only these difficulty levels (default: all); --name keeps their results apart")
    parser.add_argument("--genarm-alpha", type=float, action="append", default=[])
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--cache", default=None, help="router cache of the subset's gold solutions (default: "
                                                      "<router>.cache/test, as train-router writes it)")
    parser.add_argument("--reuse-solutions", action="store_true",
                        help="keep the full-solution results of an earlier run (same RM, router and subset)")
    parser.add_argument("--name", default="taro_eval")
    parser.add_argument("--ood-prompts", type=int, default=45,
                        help="held-out positivity prompts for the out-of-domain run (0: skip it)")
    add_options(parser, quick=f"2 level-0 problems, {QUICK_PAIRS} step pairs, {QUICK_TOKENS} new tokens, "
                              "one GenARM alpha; without --rm/--router an untrained RM and router (a smoke run)",
                dtype="base and reward model weights (default: float32 everywhere: accuracy results are fp32)",
                threads=1)
    args = parser.parse_args()
    start(args)
    dtype = getattr(torch, args.dtype or "float32")
    if args.rm_summary is not None:
        return rm_summary(args, dtype)
    if args.train:
        args.rm, args.router = train_models(args.train, args.threads or 2)
    if not (args.rm and args.router) and not args.quick:
        parser.error("--rm and --router are required (or --rm-summary, or --quick for a smoke run)")
    if args.quick:
        args.per_level, args.levels = 2, args.levels or [0]
        args.genarm_alpha = args.genarm_alpha[:1] or [1.0]
    import transformers

    transformers.logging.disable_progress_bar()
    genarm_alphas = args.genarm_alpha or [0.25, 0.5, 1.0]
    patient, tokenizer = fastdoctor.load_model("default", dtype=dtype, device=args.device)
    vocab = patient.get_output_embeddings().weight.shape[0]
    smoke = not (args.rm and args.router)
    if args.rm:
        rm = taro.load_reward_model(args.rm, tokenizer=tokenizer, dtype=dtype, device=args.device, patient=patient)[0]
        rm_info = json.loads((pathlib.Path(args.rm) / "taro_rm.json").read_text())["info"]
    else:
        rm, rm_info = copy.deepcopy(patient), {}
    if args.router:
        router = taro.load_router(args.router, vocab_size=vocab, tokenizer=tokenizer, device=args.device)
        router_meta = taro.read_router_meta(args.router)
    else:
        router = taro.Router(vocab).to(args.device).eval()
        router_meta = {**router.config(), "k": router.k, "info": {}}
    stem = result_stem(args.out, args.name, args.device)
    rm_label = display_path(args.rm) if args.rm else "an untrained copy of the patient (smoke run)"
    router_label = display_path(args.router) if args.router else "a fresh, untrained taro.Router (smoke run)"
    held_out = [p for p in load_problems("test") if args.levels is None or p.level in args.levels]
    subset = eval_subset(held_out, args.per_level)
    limits = {level: QUICK_TOKENS for level in MAX_NEW_TOKENS} if args.quick else MAX_NEW_TOKENS
    previous = json.loads(stem.with_suffix(".json").read_text()) if stem.with_suffix(".json").exists() else {}
    if (args.reuse_solutions and previous.get("subset", {}).get("ids") == [p.id for p in subset]
            and previous.get("reward_model", {}).get("path") == rm_label
            and previous.get("router", {}).get("path") == router_label):
        solutions = {k: previous[k] for k in ("subset", "max_new_tokens", "decoding", "variants")}
        print("[taro-eval] reusing the full-solution results of", display_path(stem.with_suffix(".json")))
    else:
        solutions = evaluate(patient, tokenizer, rm=rm, router=router, problems=held_out, per_level=args.per_level,
                             genarm_alphas=genarm_alphas, batch_size=args.batch_size, max_new_tokens=limits)
    versus = ["base", best_fixed(solutions["variants"])] if rm is not None else []
    paired = paired_comparisons(solutions["variants"], against=versus)
    one_step = [p for p in subset if len(p.steps) == 1]
    first_steps = first_step_scores(solutions, subset) if len(one_step) == len(subset) else None
    if first_steps:
        paired_first = paired_comparisons(first_steps["variants"], against=versus)
    step_pairs = [p for p in load_step_pairs("test") if args.levels is None or p.level in args.levels]
    next_steps = evaluate_next_steps(patient, tokenizer, rm=rm, router=router,
                                     pairs=step_pairs[:QUICK_PAIRS] if args.quick else step_pairs,
                                     genarm_alphas=genarm_alphas, batch_size=args.batch_size,
                                     max_new_tokens=QUICK_TOKENS if args.quick else 40)
    scratch = tempfile.TemporaryDirectory() if smoke else None  # an untrained router's cache is not worth keeping
    if scratch:
        cache_dir = pathlib.Path(scratch.name) / "cache"
    else:
        cache_dir = pathlib.Path(args.cache) if args.cache else pathlib.Path(args.router).with_name(
            pathlib.Path(args.router).name + ".cache") / ("test" if args.levels is None else
                                                          "test-L" + "".join(map(str, sorted(args.levels))))
    cache = taro.build_router_cache(patient, rm, tokenizer, subset, cache_dir)
    convex = sorted({0.0, 1.0, 0.5, *(round(a / (1 + a), 4) for a in genarm_alphas)})
    teacher_forced = taro.evaluate_routing_nll(cache, router=router, fixed_alphas=convex,
                                               digit_ids=taro.digit_token_ids(tokenizer))
    if scratch:
        scratch.cleanup()
    out_of_domain = None
    if args.ood_prompts:
        prompts = [p.prompt for p in bundled_preferences("test")][: 2 if args.quick else args.ood_prompts]
        out_of_domain = evaluate_out_of_domain(patient, tokenizer, rm=rm, router=router, prompts=prompts,
                                               genarm_alphas=genarm_alphas, samples=1 if args.quick else 2,
                                               max_new_tokens=QUICK_TOKENS if args.quick else 48)

    plot_name = "taro_alpha_trace" if args.name == "taro_eval" else f"{args.name}_alpha_trace"
    plot_path = result_stem(args.out, plot_name, args.device).with_suffix(".png")
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    router_records = next(v["records"] for v in solutions["variants"] if v["kind"] == "router")
    plot_alpha_traces(router_records, tokenizer, plot_path)
    side_by_side = None
    if out_of_domain and out_of_domain["router_trace"]:
        side_by_side = result_stem(args.out, f"{args.name}_alpha_in_and_out", args.device).with_suffix(".png")
        shown = sorted(router_records, key=lambda r: not r["correct"])[0]  # a correct one where there is one
        plot_alpha_in_and_out_of_domain(shown, out_of_domain["router_trace"], tokenizer, side_by_side)
    info = router_meta["info"]
    meta = run_meta(args.device, patient=f"SmolLM2-135M-Instruct ({dtype_name(dtype)})", smoke_run=smoke,
                    quick=args.quick,
                    reward_model={"path": rm_label, **{k: rm_info.get(k) for k in
                                                       ("beta_r", "lora", "train_pairs", "config", "held_out_before",
                                                        "held_out_after")}},
                    router={"path": router_label, **{k: router_meta[k] for k in ("k", "embed_dim", "hidden",
                                                                                 "vocab_size")},
                            **{k: info.get(k) for k in ("entropy_weight", "config", "train_problems", "train_tokens",
                                                        "final_train")}},
                    **solutions, next_step=next_steps, teacher_forced=teacher_forced, paired_tests=paired,
                    first_step=first_steps, paired_tests_first_step=paired_first if first_steps else None,
                    out_of_domain=out_of_domain)
    # The summary table: one row per variant; the per-level tables follow as sections.
    next_by_name = {v["name"]: v for v in next_steps["variants"]}
    rows = [{"variant": v["name"], "solutions": v["accuracy"]["all"]["accuracy"],
             "solutions_se": v["accuracy"]["all"]["se"], "solutions_s": v["seconds"],
             "next_step": next_by_name[v["name"]]["accuracy"]["all"]["accuracy"],
             "next_step_s": next_by_name[v["name"]]["seconds"]} for v in solutions["variants"]]
    columns = [("variant", "variant"), ("solutions", "full-solution accuracy"), ("solutions_se", "s.e."),
               ("next_step", "next-step accuracy"), ("solutions_s", "solutions s"), ("next_step_s", "next step s")]

    rm_line = "Reward model: an untrained copy of the patient (smoke run)."
    before, after = rm_info.get("held_out_before"), rm_info.get("held_out_after")
    if after:
        rm_line = (f"Reward model: a LoRA copy of the patient (beta_r {rm_info['beta_r']}, LoRA r {rm_info['lora']['rank']} "
                   f"on {rm_info['lora'].get('layers', 'all')} layers, {rm_info['config']['steps']} steps x "
                   f"{rm_info['config']['batch_size']} pairs, bf16 autocast): held-out step-pair accuracy "
                   f"{after['accuracy']:.3f} on {after['pairs']} pairs" +
                   (f" (before training, i.e. the patient: {before['accuracy']:.3f} on {before['pairs']})" if before else "") +
                   f"; per level {after['by_level']}; per error type {after['by_error_type']}.")
    router_line = (f"Router: K {router_meta['k']}, d {router_meta['embed_dim']}, H {router_meta['hidden']}, "
                   + (f"trained {info['config']['steps']} steps x {info['config']['batch_size']} gold solutions of the "
                      f"train split ({info['train_tokens']} tokens), entropy weight {info['entropy_weight']}"
                      if info.get("config") else "fresh and untrained (smoke run)") +
                   f". Alpha traces: {plot_path.name}.")
    budgets = ", ".join(f"L{k} {v}" for k, v in limits.items() if args.levels is None or k in args.levels)
    sections = [
        f"## Full solutions: final-answer accuracy ± s.e. (held-out, first {args.per_level} problems per level; "
        f"max new tokens {budgets})",
        markdown_table(solutions),
        f"## Next step: first equation exact and equal to the correct step's result ({next_steps['contexts']} "
        f"distinct held-out step-pair contexts, {next_steps['max_new_tokens']} new tokens)",
        markdown_table(next_steps),
        f"## Teacher-forced on the gold solutions of the same subset ({teacher_forced['tokens']} tokens, "
        f"{teacher_forced.get('digit_tokens', 0)} digit tokens); fixed a = convex weight of the RM",
        teacher_forced_table(teacher_forced),
        f"Router mean alpha (teacher-forced): {teacher_forced['router_alpha_mean']}.", rm_line, router_line]
    if paired:
        sections[2:2] = ["## Paired: McNemar's exact test of the router against the base and the best fixed alpha "
                         "(same problems; router-only / other-only = problems only that one solves)",
                         paired_table(paired)]
    if first_steps:
        sections += [f"## Next step on every evaluated problem (one-step levels: the first equation of the "
                     f"solution above, {first_steps['contexts']} problems)", markdown_table(first_steps),
                     paired_table(paired_first)]
    if out_of_domain:
        sections += [f"## Out of domain: {out_of_domain['prompts']} held-out positivity prompts x "
                     f"{out_of_domain['samples']} samples (top-p {out_of_domain['top_p']}, temperature 1, "
                     f"{out_of_domain['max_new_tokens']} new tokens, the same seeds for every variant)",
                     ood_table(out_of_domain)]
        if side_by_side:
            sections.append(f"Alpha per token in band and out of domain: {side_by_side.name}.")
    title = "TARo evaluation" + (" (smoke run: untrained RM and router)" if smoke else "")
    _, md_path = write_results(
        args.name, args.device, meta, rows, columns, out=args.out, title=title, sections=sections,
        note=f"Patient SmolLM2-135M-Instruct ({dtype_name(dtype)}); every variant greedy. genarm a'=x decodes z_base + "
             "x z_rm, the convex mix at a = x/(1+x); under greedy decoding temperature matching (METHODS.md §3.3) "
             "changes nothing. Seconds: one timed decoding pass per variant.")
    print(md_path.read_text())


if __name__ == "__main__":
    main()
