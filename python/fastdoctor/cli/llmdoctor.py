"""The LLMdoctor commands: `fastdoctor rewards` (stage 1), `fastdoctor train` (TFPO, or the GenARM baseline,
on a rewards file) and `fastdoctor quickstart`."""
from __future__ import annotations

import argparse
import pathlib

from .arguments import positive_int, writable_path


def _cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    import torch
    import transformers

    import fastdoctor
    from fastdoctor.llmdoctor import distill, tfpo
    from fastdoctor.llmdoctor import recipes
    from fastdoctor.llmdoctor.data import bundled_preferences
    from fastdoctor.train import TrainConfig, init_distributed, shutdown_distributed

    transformers.logging.disable_progress_bar()
    rank, world = init_distributed()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and world > 1:
        device = f"cuda:{rank % torch.cuda.device_count()}"
    patient, tokenizer = fastdoctor.load_model(args.patient, device=device)
    examples = recipes.scored_examples(args.rewards, tokenizer, patient)
    out = pathlib.Path(args.out)
    init = recipes.DoctorInit(kind=args.init, lora_rank=args.lora_rank, num_layers=args.layers,
                               keep_last=args.keep_last, value_hidden=args.value_hidden,
                               value_ramp=args.value_ramp)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
                         lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, clip=args.clip,
                         seed=args.seed, log_every=args.log_every, checkpoint_every=args.checkpoint_every,
                         autocast=args.autocast)
    if init.kind == "small":
        sequences = distill.chat_sequences(tokenizer, bundled_preferences(args.distill_data))
        if args.distill_samples:  # more of the patient's own text: what lifts held-out agreement past ~0.5
            sequences += distill.patient_samples(patient, tokenizer,
                                                 [p.prompt for p in bundled_preferences(args.distill_data)],
                                                 samples=args.distill_samples)
        distill_config = dataclasses.replace(config, steps=args.distill_steps, lr=args.distill_lr)
        lm = recipes.distill_small(patient, tokenizer, sequences, out / "distill", init, distill_config,
                                    resume=not args.no_resume)
    else:
        lm = recipes.build_lm(patient, init, seed=args.seed)
    info = {"patient": args.patient, "init": dataclasses.asdict(init), "rewards": str(args.rewards)}
    if args.method == "genarm":
        recipes.train_genarm(lm, tokenizer, examples, out, config, beta_r=args.beta_r, resume=not args.no_resume,
                              info=info)
    else:
        settings = tfpo.TFPOSettings(flow=args.flow, kappa=args.kappa, terminal_log_v=None if args.free_terminal else args.terminal_log_v,
                                     gamma=args.gamma, value_weight=args.lam, subtb_lambda=args.subtb_lambda)
        recipes.train_tfpo(lm, tokenizer, examples, out, config, settings, value_hidden=init.value_hidden,
                            value_ramp=init.value_ramp, resume=not args.no_resume, info=info)
    if rank == 0:
        print(f"[train] wrote {out / 'doctor'} (use it with: fastdoctor generate --doctor {out / 'doctor'})")
    shutdown_distributed()
    return 0


def _cmd_rewards(args: argparse.Namespace) -> int:
    import transformers

    import fastdoctor
    from fastdoctor.llmdoctor import data, rewards

    transformers.logging.disable_progress_bar()
    if args.data.startswith("bundled:"):
        parts = args.data.split(":")[1:]  # bundled:<split> (positivity) or bundled:<dimension>:<split>
        pairs = data.bundled_preferences(parts[-1], *parts[:-1])
    else:
        pairs = data.load_preferences(args.data)
    if args.limit:
        pairs = pairs[: args.limit]
    model, tokenizer = fastdoctor.load_model(args.patient, device=args.device or "cpu")
    settings = rewards.RewardSettings(tau=args.tau, theta=args.theta, eps=args.eps, faces=rewards.FACES[args.faces],
                                      truncate=args.truncate)
    summary = rewards.acquire_rewards(model, tokenizer, pairs, args.out, settings,
                                      share_prefix=not args.no_prefix_sharing, patient_name=args.patient)
    print(f"[rewards] wrote {args.out}: {summary['pairs']} pairs, {summary['response_tokens']} response tokens, "
          f"{100 * summary['nonzero_fraction']:.1f}% non-zero rewards, {summary['seconds']} s")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    import shutil

    from fastdoctor.llmdoctor import quickstart
    from fastdoctor.models import cache_dir

    settings = quickstart.QuickstartSettings(doctor=args.doctor, steps=args.steps, strength=args.strength,
                                             samples=args.samples, dtype=args.dtype).resolved()
    if args.fresh:
        shutil.rmtree(cache_dir() / "quickstart" / settings.digest(), ignore_errors=True)
        quickstart.rewards_cache(settings, "positivity").unlink(missing_ok=True)  # stage 1 too
    quickstart.run(settings, threads=args.threads)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import transformers

    import fastdoctor
    from fastdoctor.adapters import folder_size
    from fastdoctor.doctors import doctor_folder
    from fastdoctor.llmdoctor.doctor import export_merged

    transformers.logging.disable_progress_bar()
    try:
        source = doctor_folder(args.doctor)
        patient, tokenizer = fastdoctor.load_model(args.patient)
        out = export_merged(source, patient, args.merged, tokenizer)
    except ValueError as error:
        raise SystemExit(f"export: {error}") from None
    print(f"[fastdoctor] wrote the merged doctor to {out}: {folder_size(out) / 1e6:.1f} MB (the adapter: "
          f"{folder_size(source) / 1e6:.1f} MB)")
    return 0


def add_commands(sub) -> None:
    """Adds `rewards`, `train`, `export` and `quickstart` to the main parser's subcommands."""
    rw = sub.add_parser("rewards", help="token-level rewards from the patient's positive and negative faces")
    rw.add_argument("--data", required=True, help="JSONL with prompt/chosen/rejected, or bundled:train / bundled:test (positivity) or "
                    "bundled:concision:train")
    rw.add_argument("--out", required=True, type=writable_path,
                    help="output .safetensors (written atomically; resumable)")
    rw.add_argument("--patient", default="default")
    rw.add_argument("--faces", default="general", choices=["general", "positivity", "concision"],
                    help="face system prompts")
    rw.add_argument("--tau", type=float, default=1.0, help="tanh temperature")
    rw.add_argument("--theta", type=float, default=0.65, help="sparsity threshold on tanh(dhat / tau)")
    rw.add_argument("--eps", type=float, default=1e-6)
    rw.add_argument("--truncate", action="store_true", help="cut responses that exceed the context")
    rw.add_argument("--no-prefix-sharing", action="store_true", help="prefill prompt+response per face (slower)")
    rw.add_argument("--limit", type=positive_int, default=None, help="only the first N pairs")
    rw.add_argument("--device", default=None)
    rw.set_defaults(func=_cmd_rewards)
    tr = sub.add_parser("train", help="train a doctor with TFPO (or the GenARM baseline) on a rewards file")
    tr.add_argument("--rewards", required=True, help="a rewards file from `fastdoctor rewards`")
    tr.add_argument("--out", required=True, type=writable_path,
                    help="output folder: checkpoint/, log.jsonl, loss.png, doctor/")
    tr.add_argument("--patient", default="default")
    tr.add_argument("--method", default="tfpo", choices=["tfpo", "genarm"])
    tr.add_argument("--init", default="full", choices=["full", "small"],
                    help="full: LoRA copy of the patient; small: distilled reduced copy")
    tr.add_argument("--lora-rank", type=int, default=8)
    tr.add_argument("--layers", type=int, default=15, help="small doctor: layers kept")
    tr.add_argument("--keep-last", type=int, default=7, help="small doctor: how many of them are the last layers")
    tr.add_argument("--distill-steps", type=int, default=60)
    tr.add_argument("--distill-lr", type=float, default=3e-4)
    tr.add_argument("--distill-samples", type=int, default=0,
                    help="small doctor: also distil on this many fresh patient samples per prompt (bench: 4)")
    tr.add_argument("--distill-data", default="train", help="bundled positivity split whose responses are distilled on")
    tr.add_argument("--value-hidden", type=int, default=0, help="0: linear value head; else a tanh MLP of this width")
    tr.add_argument("--value-ramp", action=argparse.BooleanOptionalAction, default=None,
                    help="a fitted position ramp in log V (default: with --flow rewards only, where it takes the "
                         "doctor's own log-prob drift out of SubTB)")
    tr.add_argument("--flow", default="reference", choices=["reference", "rewards"],
                    help="log Q: the doctor's start's log-probs plus kappa * cumulative reward (reference), or "
                         "kappa * cumulative reward alone (rewards; METHODS.md decision 1)")
    tr.add_argument("--kappa", type=float, default=1.0, help="the weight of the cumulative reward in log Q")
    tr.add_argument("--terminal-log-v", type=float, default=0.0, help="log V pinned after the last token")
    tr.add_argument("--free-terminal", action="store_true", help="do not pin the terminal log V")
    tr.add_argument("--gamma", type=float, default=0.1, help="value hinge margin")
    tr.add_argument("--lam", type=float, default=0.1, help="weight of the value loss")
    tr.add_argument("--subtb-lambda", type=float, default=None, help="lambda-weighted SubTB (default: uniform)")
    tr.add_argument("--beta-r", type=float, default=0.05, help="GenARM: Bradley-Terry temperature")
    tr.add_argument("--steps", type=int, default=64)
    tr.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step, over all processes")
    tr.add_argument("--micro-batch-size", type=int, default=0, help="pairs per forward (0: all; else accumulate)")
    tr.add_argument("--lr", type=float, default=5e-4)
    tr.add_argument("--weight-decay", type=float, default=0.0)
    tr.add_argument("--warmup-steps", type=int, default=6)
    tr.add_argument("--clip", type=float, default=1.0)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--log-every", type=int, default=10)
    tr.add_argument("--checkpoint-every", type=int, default=20)
    tr.add_argument("--autocast", default="auto", choices=["auto", "bf16", "none"])
    tr.add_argument("--threads", type=int, default=None)
    tr.add_argument("--device", default=None)
    tr.add_argument("--no-resume", action="store_true", help="start over even if <out>/checkpoint exists")
    tr.set_defaults(func=_cmd_train)
    ex = sub.add_parser("export", help="write an adapter doctor as a standalone merged HF folder")
    ex.add_argument("--doctor", required=True, help="an adapter doctor folder, or bundled:positivity")
    ex.add_argument("--merged", required=True, type=writable_path, help="output folder (written atomically)")
    ex.add_argument("--patient", default="default", help="the patient it adapts (HF folder, or 'default')")
    ex.set_defaults(func=_cmd_export)
    qs = sub.add_parser("quickstart", help="LLMdoctor end to end on the default patient (offline, cached)")
    qs.add_argument("--doctor", default="full", choices=["full", "small"])
    qs.add_argument("--steps", type=int, default=48, help="TFPO steps")
    qs.add_argument("--strength", type=float, default=1.0,
                    help="the doctor's guidance strength g on its advantage over the patient: alpha = 1 - g, "
                         "beta = g (default 1: the trained doctor itself, the patient tilted by its rewards)")
    qs.add_argument("--samples", type=int, default=2, help="samples per held-out prompt")
    qs.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="of the sampling stage (auto: bfloat16 where the CPU/GPU has native bf16, else float32)")
    qs.add_argument("--threads", type=int, default=None)
    qs.add_argument("--fresh", action="store_true", help="recompute instead of using the cache")
    qs.set_defaults(func=_cmd_quickstart)
