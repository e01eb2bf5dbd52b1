"""The `fastdoctor` command (the commands' modules import their method only when run).

  fastdoctor env                         versions, and which compiled kernels loaded
  fastdoctor generate --prompt TEXT      stream a steered completion from the patient (+ --doctor PATH ...)
  fastdoctor rewards --data F --out R    token-level rewards from the patient's two faces (LLMdoctor stage 1)
  fastdoctor train --rewards R --out D    train a doctor with TFPO (or --method genarm) on a rewards file
  fastdoctor export --doctor D --merged M  write an adapter doctor as a standalone merged HF folder
  fastdoctor quickstart                  LLMdoctor end to end on the default patient (offline, cached)
  fastdoctor taro train-rm|train-router|eval   TARo reward model, router, reasoning evaluation
"""
from __future__ import annotations

import argparse
import os
import sys

from . import llmdoctor, taro
from .arguments import utf8_text


def environment_report() -> dict[str, str]:
    import torch

    import fastdoctor
    from fastdoctor import _C

    info = _C.build_info()
    try:
        import transformers

        transformers_version = transformers.__version__
    except ImportError:
        transformers_version = "not installed"
    cuda_available = torch.cuda.is_available()
    cuda_kernels = bool(info["cuda_compiled"]) and torch._C._dispatch_has_kernel_for_dispatch_key(
        "fastdoctor::mixed_sampling_from_logits", "CUDA")
    cpu_kernels = torch._C._dispatch_has_kernel_for_dispatch_key("fastdoctor::mixed_sampling_from_logits", "CPU")
    return {
        "fastdoctor": fastdoctor.__version__,
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda or "none (CPU build)",
        "transformers": transformers_version,
        "CPU kernels": "loaded" if cpu_kernels else "missing",
        "CUDA kernels": ("loaded" if cuda_kernels else "missing") + (
            f" (compiled for sm_{info['cuda_archs']})" if info["cuda_compiled"] else " (built without CUDA)"),
        "CUDA device": torch.cuda.get_device_name(0) if cuda_available else "none",
        "ops run on": "cuda" if (cuda_available and cuda_kernels) else "cpu",
        "generate dtype": _dtype_line("cuda" if cuda_available else "cpu"),  # generate's default device
    }


def _dtype_line(device: str) -> str:
    import torch

    from fastdoctor.models import decode_dtype

    if decode_dtype(device) == torch.bfloat16:
        where = "GPU" if device == "cuda" else "CPU (AVX512-BF16 / AMX)"
        return f"bfloat16 (native bf16 on this {where}; --dtype float32 to choose)"
    return f"float32 (no native bf16 on this {device}; --dtype bfloat16 to choose)"


def resolve_dtype(name: str, device):
    """--dtype NAME as a torch dtype; 'auto' is models.decode_dtype(device)."""
    import torch

    from fastdoctor.models import decode_dtype

    return decode_dtype(device) if name == "auto" else getattr(torch, name)


def _cmd_env(_args: argparse.Namespace) -> int:
    for key, value in environment_report().items():
        print(f"{key:>14}: {value}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    import time

    import torch
    import transformers
    from transformers import TextStreamer

    import fastdoctor

    transformers.logging.disable_progress_bar()  # the weight-loading bars would drown the streamed text
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(args.dtype, device)
    try:
        patient, tokenizer = fastdoctor.load_model(args.patient, dtype=dtype, device=device, tp_size=args.tp)
    except ValueError as error:
        raise SystemExit(f"--tp: {error}" if args.tp else str(error)) from None
    device = next(patient.parameters()).device  # under --tp, transformers places each rank's shards
    speaks = int(os.environ.get("RANK", "0")) == 0  # under --tp every rank decodes; rank 0 alone prints
    doctors = []
    for spec in args.doctor:
        try:  # the library's refusals are ValueErrors; here they become a message and exit status 1
            doctors.append(fastdoctor.load_doctor(spec, patient, tokenizer, dtype=dtype, device=device))
        except ValueError as error:
            raise SystemExit(f"--doctor {spec}: {error}") from None
    alpha, betas = args.alpha, args.beta or [1.0] * len(doctors)
    if args.strength:  # strengths g become weights by a convention (fastdoctor.fronts)
        if args.beta or args.alpha != 1.0:
            raise SystemExit("--strength replaces --alpha and --beta: give one or the other")
        if len(args.strength) != len(doctors):
            raise SystemExit(f"--strength: give one per --doctor ({len(doctors)}), got {len(args.strength)}")
        from fastdoctor.fronts import guidance_weights

        convention = args.convention
        if convention == "auto":
            try:
                recorded = {decoding_convention(spec) for spec in args.doctor}
            except ValueError as error:
                raise SystemExit(f"--doctor {error}") from None
            if len(recorded) > 1:
                raise SystemExit(f"--strength: these doctors record different conventions ({', '.join(sorted(recorded))}); "
                                 "choose one with --convention")
            convention = recorded.pop()
        try:
            alpha, betas = guidance_weights(args.strength, convention)
        except ValueError as error:
            raise SystemExit(f"--strength: {error}") from None
    if len(betas) != len(doctors):
        raise SystemExit(f"--beta: give one per --doctor ({len(doctors)}), got {len(betas)}")
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}]
    if tokenizer.chat_template:
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)
        input_ids = encoded["input_ids"]
    else:
        input_ids = tokenizer(args.prompt, return_tensors="pt")["input_ids"]
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if speaks else None
    started = time.perf_counter()
    output = fastdoctor.generate(patient, input_ids.to(device), doctors=doctors, alpha=alpha, betas=betas,
                                 max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                 top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                 streamer=streamer)
    elapsed = time.perf_counter() - started
    new_tokens = output.shape[1] - input_ids.shape[1]
    where = f"{device.type}" + (f", {args.tp} tensor-parallel ranks" if args.tp else "")
    if speaks:
        print(f"[fastdoctor] {new_tokens} new tokens in {elapsed:.2f} s: {new_tokens / elapsed:.1f} tokens/s "
              f"({1 + len(doctors)} model(s), {where}, {str(dtype).removeprefix('torch.')})", file=sys.stderr)
    return 0


def decoding_convention(spec: str) -> str:
    """How --strength turns into weights for the doctor at SPEC: the convention its doctor.json records
    (info.decoding.convention: "advantage" for reference-flow TFPO doctors), else "normalised"."""
    from fastdoctor.doctors import doctor_folder, read_record

    info = read_record(doctor_folder(spec)).get("info")
    decoding = info.get("decoding") if isinstance(info, dict) else None
    convention = decoding.get("convention", "normalised") if isinstance(decoding, dict) else "normalised"
    if convention not in ("normalised", "advantage"):
        raise ValueError(f"{spec}: records an unknown decoding convention {convention!r}")
    return convention


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastdoctor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="print versions and which compiled kernels loaded").set_defaults(func=_cmd_env)
    gen = sub.add_parser("generate", help="stream a completion from the patient, steered by doctors")
    gen.add_argument("--prompt", required=True, type=utf8_text, help="the user message (the chat template is applied)")
    gen.add_argument("--system", default=None, type=utf8_text, help="an optional system message")
    gen.add_argument("--patient", default="default", help="HF model folder, or 'default' (SmolLM2-135M-Instruct)")
    gen.add_argument("--doctor", action="append", default=[],
                     help="doctor folder, or bundled:positivity / bundled:concision (repeatable); adapter doctors of the patient share "
                          "its forward")
    gen.add_argument("--beta", action="append", type=float, default=[], help="weight of each doctor (repeatable)")
    gen.add_argument("--alpha", type=float, default=1.0, help="weight of the patient")
    gen.add_argument("--strength", action="append", type=float, default=[],
                     help="guidance strength g of each doctor (repeatable), instead of --alpha/--beta, under "
                          "--convention")
    gen.add_argument("--convention", default="auto", choices=["auto", "normalised", "advantage"],
                     help="how --strength becomes weights: advantage: alpha = 1 - sum g, beta_i = g_i (log p + "
                          "sum g_i (log p_i - log p), for doctors trained from the patient); normalised: alpha = "
                          "1 / (1 + sum g), beta_i = g_i / (1 + sum g); auto: what the doctors record (TFPO doctors: "
                          "advantage), else normalised")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=0, help="0 = off")
    gen.add_argument("--top-p", type=float, default=0.9, help="1 = off")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                     help="auto: bfloat16 where the device has native bf16, else float32 (see `fastdoctor env`)")
    gen.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    gen.add_argument("--tp", type=int, default=None, metavar="N",
                     help="shard the patient over N processes by transformers' tensor-parallel plan (run under "
                          "torchrun --nproc_per_node N; adapter doctors shard with it, rank 0 prints)")
    gen.set_defaults(func=_cmd_generate)
    llmdoctor.add_commands(sub)
    taro.add_commands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
