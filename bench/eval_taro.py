"""TARo on the bundled reasoning problems, on held-out data only, every variant greedy:

  base             the patient alone
  genarm a'=x      fixed-alpha GenARM, z_base + x z_rm (the convex mix at a = x / (1 + x))
  taro router      z = (1 - a_t) z_base + a_t z_rm, a_t from the learned router (the fused gating op)
  rm alone         the reward model alone

Three measurements:
  solutions        full solutions of a fixed subset (the first --per-level problems of each level of
                   reasoning_problems_test.jsonl), final answer checked by the verifier; accuracy ± s.e.
  next step        the held-out step pairs' contexts (chat prompt + the correct earlier steps), one per distinct
                   context: is the first equation of the greedy continuation exact and equal to the chosen
                   step's result? (the local task the reward model was trained on)
  teacher-forced   on the gold solutions of the same subset: per-token NLL and greedy top-1 accuracy (overall and
                   on digit tokens) under the router and fixed convex mixes (from the frozen models' cached logits)

    fastdoctor taro train-rm --out RM ...; fastdoctor taro train-router --rm RM --out ROUTER ...
    python bench/eval_taro.py --rm RM --router ROUTER [--per-level 20] [--reuse-solutions]
                              [--levels 0 --per-level 60 --name taro_eval_level0]

Writes bench/results/taro_eval_cpu.{json,md} and bench/results/taro_alpha_trace_cpu.png; the reward model's
held-out pair accuracy and the router's training summary are copied from their saved JSON.
"""
from __future__ import annotations

import argparse
import json
import pathlib

import torch

import fastdoctor
from fastdoctor import taro
from fastdoctor.taro.reasoning import load_problems, load_step_pairs
from fastdoctor.taro.evaluate import (MAX_NEW_TOKENS, eval_subset, evaluate, evaluate_next_steps, markdown_table,
                                  plot_alpha_traces)
from common import RESULTS, run_meta


def teacher_forced_table(tf: dict) -> str:
    lines = ["| variant | NLL/token | top-1 | NLL/token digits | top-1 digits |", "|---|---|---|---|---|"]
    for name in tf["nll"]:
        lines.append(f"| {name} | {tf['nll'][name]['all']:.4f} | {tf['top1'][name]['all']:.4f} | "
                     f"{tf['nll_digits'][name]:.4f} | {tf['top1_digits'][name]:.4f} |")
    return "\n".join(lines)


def rm_summary(paths: list[str], threads: int) -> None:
    """taro_rm_cpu.{json,md}: held-out step-pair accuracy of the patient (the untrained RM) and of each trained
    reward model (from its taro_rm.json), on all 120 held-out pairs."""
    from fastdoctor.taro.reasoning import load_step_pairs

    torch.set_num_threads(threads)
    patient, tokenizer = fastdoctor.load_model("default")
    pairs = taro.step_pair_tokens(tokenizer, load_step_pairs("test"))
    rows = [{"model": "patient (untrained RM)", **taro.pair_accuracy(patient, pairs, beta_r=1.0,
                                                                     pad_id=tokenizer.eos_token_id)}]
    for path in paths:
        info = json.loads((pathlib.Path(path) / "taro_rm.json").read_text())["info"]
        rows.append({"model": f"RM beta_r {info['beta_r']}, LoRA r {info['lora']['rank']} on "
                              f"{info['lora'].get('layers', 'all')} layers, {info['config']['steps']} steps x "
                              f"{info['config']['batch_size']}, lr {info['config']['lr']}", **info["held_out_after"]})
    meta = run_meta("cpu")
    stem = RESULTS / "taro_rm_cpu"
    stem.with_suffix(".json").write_text(json.dumps({"benchmark": "taro_rm", **meta, "rows": rows}, indent=1) + "\n")
    levels = sorted(rows[0]["by_level"])
    errors = sorted(rows[0]["by_error_type"])
    lines = [f"# TARo reward model: held-out step-pair accuracy ({meta['hardware']})", "",
             f"torch {meta['torch']}, {meta['date']}. Pair accuracy = the RM's summed log-prob of the chosen step beats "
             "the rejected one's, given chat prompt + earlier steps; 120 held-out pairs (30 per level). fp32 scoring.",
             "", "| model | pairs | accuracy | mean margin | " + " | ".join(f"L{lv}" for lv in levels) + " | " +
             " | ".join(errors) + " |", "|" + "---|" * (4 + len(levels) + len(errors))]
    for r in rows:
        lines.append(f"| {r['model']} | {r['pairs']} | {r['accuracy']:.3f} | {r['margin']:.2f} | " +
                     " | ".join(f"{r['by_level'][lv]:.2f}" for lv in levels) + " | " +
                     " | ".join(f"{r['by_error_type'][e]:.2f}" for e in errors) + " |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rm", default=None)
    parser.add_argument("--router", default=None)
    parser.add_argument("--rm-summary", nargs="+", default=None, metavar="RM",
                        help="only write taro_rm_cpu.{json,md}: the patient's and these RMs' held-out pair accuracy")
    parser.add_argument("--per-level", type=int, default=20)
    parser.add_argument("--levels", type=int, nargs="+", default=None,
                        help="evaluate only these difficulty levels (default: all); --name keeps their results apart")
    parser.add_argument("--genarm-alpha", type=float, action="append", default=[])
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default=None, help="router cache of the subset's gold solutions (default: "
                                                      "<router>.cache/test, as train-router writes it)")
    parser.add_argument("--reuse-solutions", action="store_true",
                        help="keep the full-solution results of an earlier run (same RM, router and subset)")
    parser.add_argument("--name", default="taro_eval")
    args = parser.parse_args()
    if args.rm_summary:
        return rm_summary(args.rm_summary, args.threads)
    if not (args.rm and args.router):
        parser.error("--rm and --router are required (or --rm-summary)")
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.disable_progress_bar()
    genarm_alphas = args.genarm_alpha or [0.25, 0.5, 1.0]
    patient, tokenizer = fastdoctor.load_model("default")
    rm, _ = taro.load_reward_model(args.rm, tokenizer=tokenizer)
    router = taro.load_router(args.router, vocab_size=patient.get_output_embeddings().weight.shape[0],
                              tokenizer=tokenizer)
    stem = RESULTS / f"{args.name}_cpu"
    held_out = [p for p in load_problems("test") if args.levels is None or p.level in args.levels]
    subset = eval_subset(held_out, args.per_level)
    previous = json.loads(stem.with_suffix(".json").read_text()) if stem.with_suffix(".json").exists() else {}
    if (args.reuse_solutions and previous.get("subset", {}).get("ids") == [p.id for p in subset]
            and previous.get("reward_model", {}).get("path") == args.rm
            and previous.get("router", {}).get("path") == args.router):
        solutions = {k: previous[k] for k in ("subset", "max_new_tokens", "decoding", "variants")}
        print("[taro-eval] reusing the full-solution results of", stem.with_suffix(".json"))
    else:
        solutions = evaluate(patient, tokenizer, rm=rm, router=router, problems=held_out, per_level=args.per_level,
                             genarm_alphas=genarm_alphas, batch_size=args.batch_size)
    step_pairs = [p for p in load_step_pairs("test") if args.levels is None or p.level in args.levels]
    next_steps = evaluate_next_steps(patient, tokenizer, rm=rm, router=router, pairs=step_pairs,
                                     genarm_alphas=genarm_alphas, batch_size=args.batch_size)
    cache_dir = pathlib.Path(args.cache) if args.cache else pathlib.Path(args.router).with_name(
        pathlib.Path(args.router).name + ".cache") / ("test" if args.levels is None else
                                                      "test-L" + "".join(map(str, sorted(args.levels))))
    cache = taro.build_router_cache(patient, rm, tokenizer, subset, cache_dir)
    convex = sorted({0.0, 1.0, 0.5, *(round(a / (1 + a), 4) for a in genarm_alphas)})
    teacher_forced = taro.evaluate_routing_nll(cache, router=router, fixed_alphas=convex,
                                               digit_ids=taro.digit_token_ids(tokenizer))

    rm_info = json.loads((pathlib.Path(args.rm) / "taro_rm.json").read_text())["info"]
    router_meta = taro.read_router_meta(args.router)
    meta = run_meta("cpu")
    payload = {"benchmark": args.name, **meta, "patient": "SmolLM2-135M-Instruct (float32)",
               "reward_model": {"path": args.rm, **{k: rm_info.get(k) for k in
                                                    ("beta_r", "lora", "train_pairs", "config", "held_out_before",
                                                     "held_out_after")}},
               "router": {"path": args.router, **{k: router_meta[k] for k in ("k", "embed_dim", "hidden", "vocab_size")},
                          **{k: router_meta["info"].get(k) for k in ("entropy_weight", "config", "train_problems",
                                                                     "train_tokens", "final_train")}},
               **solutions, "next_step": next_steps, "teacher_forced": teacher_forced}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    plot_path = RESULTS / ("taro_alpha_trace_cpu.png" if args.name == "taro_eval" else f"{args.name}_alpha_trace_cpu.png")
    plot_alpha_traces(next(v["records"] for v in solutions["variants"] if v["kind"] == "router"), tokenizer, plot_path)

    rm_line = ""
    before, after = rm_info.get("held_out_before"), rm_info.get("held_out_after")
    if after:
        rm_line = (f"Reward model: a LoRA copy of the patient (beta_r {rm_info['beta_r']}, LoRA r {rm_info['lora']['rank']} "
                   f"on {rm_info['lora'].get('layers', 'all')} layers, {rm_info['config']['steps']} steps x "
                   f"{rm_info['config']['batch_size']} pairs, bf16 autocast): held-out step-pair accuracy "
                   f"{after['accuracy']:.3f} on {after['pairs']} pairs" +
                   (f" (before training, i.e. the patient: {before['accuracy']:.3f} on {before['pairs']})" if before else "") +
                   f"; per level {after['by_level']}; per error type {after['by_error_type']}.")
    lines = [f"# TARo evaluation on {meta['hardware']}", "",
             f"torch {meta['torch']}, fastdoctor {meta['fastdoctor']}, {meta['date']}. Patient SmolLM2-135M-Instruct "
             "(fp32); every variant greedy. genarm a'=x decodes z_base + x z_rm, the convex mix at a = x/(1+x); under "
             "greedy decoding temperature matching (METHODS.md §3.3) changes nothing.", "",
             f"## Full solutions: final-answer accuracy ± s.e. (held-out, first {args.per_level} problems per level; "
             f"max new tokens {', '.join(f'L{k} {v}' for k, v in MAX_NEW_TOKENS.items() if args.levels is None or k in args.levels)})", "",
             markdown_table(solutions), "",
             f"## Next step: first equation exact and equal to the correct step's result ({next_steps['contexts']} "
             "distinct held-out step-pair contexts, 40 new tokens)", "",
             markdown_table(next_steps), "",
             f"## Teacher-forced on the gold solutions of the same subset ({teacher_forced['tokens']} tokens, "
             f"{teacher_forced['digit_tokens']} digit tokens); fixed a = convex weight of the RM", "",
             teacher_forced_table(teacher_forced), "",
             f"Router mean alpha (teacher-forced): {teacher_forced['router_alpha_mean']}.", "",
             rm_line, "",
             f"Router: K {router_meta['k']}, d {router_meta['embed_dim']}, H {router_meta['hidden']}, trained "
             f"{router_meta['info']['config']['steps']} steps x {router_meta['info']['config']['batch_size']} gold "
             f"solutions of the train split ({router_meta['info']['train_tokens']} tokens), entropy weight "
             f"{router_meta['info']['entropy_weight']}. Alpha traces: {plot_path.name}."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
