"""End-to-end TARo decoding speed: the learned router against fixed-alpha guidance, same models, same prompt.

  fixed      fastdoctor.generate(base, doctors=[rm], alpha=1, betas=[a']): the fused mix-and-sample op (GenARM)
  router     fastdoctor.generate(base, doctors=[rm], router=RoutedSteering(router)): the fused router-gating op each step
             (top-K of both models, the router MLP, mixing and sampling in one call)
  hook       the same router as a Python weights hook (torch top-K, nn.Module forward, then the mix-and-sample op):
             what a research loop would do, for reference
  forwards   the two models' forwards alone (prefill + one cached forward per token), no mixing or sampling

router overhead = router time / fixed time - 1 (target <= 5%). Every variant decodes exactly new_tokens tokens
(no EOS), greedy and top-p 0.9 sampling.

    python bench/bench_taro_generate.py [--rm PATH] [--router PATH] [--quick]
"""
from __future__ import annotations

import argparse
import copy
import functools

import torch

import fastdoctor
from fastdoctor import taro
from common import forwards_only, median_wall_seconds, run_meta, write_results

PROMPT = "Sam buys 3 boxes of 12 pencils and gives away 7 pencils. How many pencils does he have left?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rm", default=None, help="reward model folder (default: a copy of the patient)")
    parser.add_argument("--router", default=None, help="router folder (default: a fresh Router, K=20 d=32 H=128)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="B = 1 and 8 with 32 new tokens")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    patient, tokenizer = fastdoctor.load_model("default")
    rm = taro.load_reward_model(args.rm, tokenizer=tokenizer)[0] if args.rm else copy.deepcopy(patient)
    vocab = patient.get_output_embeddings().weight.shape[0]
    router = taro.load_router(args.router, vocab_size=vocab) if args.router else taro.Router(vocab)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)["input_ids"]
    meta = run_meta("cpu")

    def hook(logits):
        with torch.no_grad():
            alpha = router.alpha(logits[0], logits[1])
        return torch.stack([1 - alpha, alpha], dim=1)

    cases = [(1, 32), (8, 32)] if args.quick else [(1, 64), (8, 64)]
    timed = functools.partial(median_wall_seconds, reps=args.reps, warmup=True)
    rows = []
    with torch.inference_mode():
        for batch, new_tokens in cases:
            for sampling, extra in (("greedy", dict(temperature=0.0)), ("top-p 0.9", dict(temperature=1.0, top_p=0.9))):
                ids = prompt.expand(batch, -1).contiguous()
                common = dict(doctors=[rm], max_new_tokens=new_tokens, seed=0, **extra)
                t = {
                    "fixed": timed(lambda: fastdoctor.generate(patient, ids, alpha=1.0, betas=[1.0], **common)),
                    "router": timed(lambda: fastdoctor.generate(patient, ids, router=taro.RoutedSteering(router), **common)),
                    "hook": timed(lambda: fastdoctor.generate(patient, ids, router=hook, **common)),
                    "forwards": timed(lambda: forwards_only([patient, rm], ids, new_tokens)),
                }
                tokens = batch * new_tokens
                row = {"batch": batch, "new_tokens": new_tokens, "sampling": sampling, "reps": args.reps,
                       **{f"{k}_tok_s": tokens / v for k, v in t.items()},
                       **{f"{k}_ms_per_step": 1e3 * v / new_tokens for k, v in t.items()},
                       "router_overhead_pct": 100 * (t["router"] / t["fixed"] - 1),
                       "hook_overhead_pct": 100 * (t["hook"] / t["fixed"] - 1)}
                rows.append(row)
                print(f"B={batch} new={new_tokens} {sampling}: fixed {row['fixed_tok_s']:.1f} tok/s, router "
                      f"{row['router_tok_s']:.1f} ({row['router_overhead_pct']:+.1f}%), hook {row['hook_tok_s']:.1f} "
                      f"({row['hook_overhead_pct']:+.1f}%), forwards alone {row['forwards_tok_s']:.1f}", flush=True)
    meta.update({"patient": "SmolLM2-135M-Instruct (float32)", "rm": args.rm or "a copy of the patient",
                 "router": args.router or "a fresh Router (K=20, d=32, H=128)", "prompt_tokens": prompt.shape[1]})
    columns = [("batch", "B"), ("new_tokens", "new tokens"), ("sampling", "sampling"),
               ("fixed_tok_s", "fixed alpha tok/s"), ("router_tok_s", "router (fused) tok/s"),
               ("hook_tok_s", "router (Python hook) tok/s"), ("forwards_tok_s", "forwards alone tok/s"),
               ("router_overhead_pct", "router overhead %"), ("hook_overhead_pct", "hook overhead %"),
               ("fixed_ms_per_step", "fixed ms/step"), ("router_ms_per_step", "router ms/step")]
    json_path, md_path = write_results(
        "taro_generate", "cpu", meta, rows, columns,
        note=f"Base SmolLM2-135M-Instruct fp32 + a same-size reward model; prompt {prompt.shape[1]} tokens; median of "
             f"{args.reps} runs after a warm-up. tok/s counts every row's tokens. Overhead is relative to fixed-alpha "
             "guidance (target <= 5%). The machine is shared, so timings carry a few per cent of noise.")
    print(f"\nwrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
