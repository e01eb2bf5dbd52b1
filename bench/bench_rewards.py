"""Reward acquisition throughput (LLMdoctor stage 1) on the bundled positivity set with the default
patient: response tokens scored per second under both faces, with and without prefix sharing, in the same
run. Also reports the fraction of non-zero rewards at the chosen theta.

    python bench/bench_rewards.py [--pairs 40] [--theta 0.65] [--reps 1] [--device cpu|cuda] [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import tempfile

import transformers

import fastdoctor
from fastdoctor.llmdoctor import data, rewards
from common import Spread, add_options, dtype_name, resolve_dtype, run_meta, start, time_calls, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--theta", type=float, default=0.65)
    parser.add_argument("--faces", default="positivity")
    parser.add_argument("--reps", type=int, default=1, help="timed acquisitions per variant")
    add_options(parser, quick="1 pair", dtype="the patient's weights (default: float32 on the CPU, bfloat16 on CUDA)")
    args = parser.parse_args()
    start(args)
    pairs_wanted = 1 if args.quick else args.pairs
    transformers.logging.disable_progress_bar()
    dtype = resolve_dtype(args)
    model, tokenizer = fastdoctor.load_model("default", dtype=dtype, device=args.device)
    pairs = data.bundled_preferences("train")[:pairs_wanted]
    settings = rewards.RewardSettings(theta=args.theta, faces=rewards.FACES[args.faces])
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for share in (True, False):
            summaries = []
            timing = time_calls(lambda: summaries.append(rewards.acquire_rewards(
                model, tokenizer, pairs, f"{folder}/r{share}.safetensors", settings, share_prefix=share,
                checkpoint_every=10**9)), args.reps, args.device)
            summary = summaries[-1]
            rows.append({"prefix_sharing": "yes" if share else "no", "pairs": summary["pairs"],
                         "response_tokens": summary["response_tokens"],
                         **timing.rate_fields("tokens_per_s", summary["response_tokens"]),
                         **timing.fields("seconds", scale=1.0), "reps": timing.reps,
                         "nonzero_fraction": summary["nonzero_fraction"]})
            print(rows[-1], flush=True)
    rows[0]["speedup"] = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]
    rows[1]["speedup"] = 1.0
    meta = run_meta(args.device, patient=f"SmolLM2-135M-Instruct {dtype_name(dtype)}", faces=args.faces,
                    theta=args.theta, quick=args.quick)
    columns = [("prefix_sharing", "prefix sharing"), ("pairs", "pairs"), ("response_tokens", "response tokens"),
               Spread("tokens_per_s", "tokens/s min / median / max"), ("speedup", "speed-up"),
               ("nonzero_fraction", "non-zero rewards")]
    json_path, md_path = write_results("rewards", args.device, meta, rows, columns, out=args.out,
                                       note=f"Tokens scored under both faces per second, {args.reps} timed run(s) "
                                            "per variant; bundled train pairs; speed-up = ratio of medians.")
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
