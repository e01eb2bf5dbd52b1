"""`fastdoctor taro {train-rm, train-router, eval}`: the TARo reward model, the router, and the reasoning
evaluation (fastdoctor.taro)."""
from __future__ import annotations

import pathlib

from .arguments import positive_int, writable_path


def _load_base(args):
    import torch
    import transformers

    from fastdoctor.models import load_model

    transformers.logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    return load_model(args.patient, device=args.device)


def _cmd_train_rm(args) -> int:
    from fastdoctor.taro import reward_model
    from fastdoctor.taro.reasoning import load_step_pairs
    from fastdoctor.train import TrainConfig

    patient, tokenizer = _load_base(args)
    pairs = load_step_pairs("train")[: args.limit or None]
    eval_pairs = load_step_pairs("test")[: args.eval_limit if args.eval_limit > 0 else None] if args.eval_limit else []
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
                         lr=args.lr, warmup_steps=args.warmup_steps, log_every=args.log_every,
                         checkpoint_every=args.checkpoint_every, seed=args.seed, autocast=args.autocast)
    summary = reward_model.train_reward_model(patient, tokenizer, args.out, pairs=pairs, eval_pairs=eval_pairs, config=config,
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
    from fastdoctor.models import logits_width
    from fastdoctor.taro.evaluate import eval_subset
    from fastdoctor.taro.reasoning import load_problems
    from fastdoctor.taro.reward_model import load_reward_model
    from fastdoctor.taro.router_cache import build_router_cache
    from fastdoctor.taro.router_training import train_router
    from fastdoctor.train import TrainConfig

    patient, tokenizer = _load_base(args)
    rm, _ = load_reward_model(args.rm, tokenizer=tokenizer, device=args.device, patient=patient)
    if logits_width(rm) != logits_width(patient):
        raise SystemExit(f"--rm: emits {logits_width(rm)} logits per token, the base {logits_width(patient)}")
    out = pathlib.Path(args.out)
    cache_dir = pathlib.Path(args.cache or out.with_name(out.name + ".cache"))
    problems = load_problems("train")[: args.limit or None]
    cache = build_router_cache(patient, rm, tokenizer, problems, cache_dir / "train", batch_size=args.cache_batch)
    eval_cache = None
    if args.eval_per_level:
        held_out = eval_subset(load_problems("test"), args.eval_per_level)
        eval_cache = build_router_cache(patient, rm, tokenizer, held_out, cache_dir / "test",
                                             batch_size=args.cache_batch)
    del patient, rm  # the cache is all router training reads
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                         log_every=args.log_every, checkpoint_every=args.checkpoint_every, seed=args.seed,
                         autocast=args.autocast)
    summary = train_router(cache, out, k=args.k, embed_dim=args.embed_dim, hidden=args.hidden,
                                entropy_weight=args.entropy_weight, config=config, tokenizer=tokenizer, work=args.work,
                                resume=not args.no_resume, eval_cache=eval_cache,
                                info={"patient": args.patient, "rm": str(args.rm)})
    if summary["held_out_after"]:
        nll = summary["held_out_after"]["nll"]
        print("[taro] held-out NLL/token: " + ", ".join(f"{k} {v['all']:.4f}" for k, v in nll.items()))
    print(f"[taro] wrote the router to {out}")
    return 0


def _cmd_eval(args) -> int:
    from fastdoctor.files import write_json
    from fastdoctor.models import logits_width
    from fastdoctor.taro.evaluate import (MAX_NEW_TOKENS, evaluate, evaluate_next_steps, markdown_table,
                                          plot_alpha_traces)
    from fastdoctor.taro.reward_model import load_reward_model
    from fastdoctor.taro.router import load_router

    patient, tokenizer = _load_base(args)
    rm = router = None
    if args.rm:
        rm, _ = load_reward_model(args.rm, tokenizer=tokenizer, device=args.device, patient=patient)
    if args.router:
        if rm is None:
            raise SystemExit("--router needs --rm (the router mixes the base with the reward model)")
        router = load_router(args.router, vocab_size=logits_width(patient), tokenizer=tokenizer,
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
        write_json(out, results)
        if router is not None and args.plot:
            records = next(v["records"] for v in results["variants"] if v["kind"] == "router")
            plot_alpha_traces(records, tokenizer, args.plot)
        print(f"[taro] wrote {out}")
    return 0


def add_commands(sub) -> None:
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
            p.add_argument("--limit", type=positive_int, default=None, help="train on the first N examples only")
            p.add_argument("--autocast", default="auto", choices=["auto", "bf16", "none"],
                           help="bf16 autocast (auto: on CUDA only; bf16 also speeds CPUs with AMX)")

    rm = commands.add_parser("train-rm", help="train the step-wise reward model (GenARM loss on step pairs)")
    common(rm, training=True)
    rm.add_argument("--out", required=True, type=writable_path, help="the reward model's folder (an HF folder, written atomically)")
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
    router.add_argument("--out", required=True, type=writable_path, help="the router's folder (safetensors + JSON, written atomically)")
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
    ev.add_argument("--out", default=None, type=writable_path, help="results JSON")
    ev.add_argument("--plot", default=None, help="alpha-trace PNG (with --router and --out)")
    ev.set_defaults(func=_cmd_eval)
