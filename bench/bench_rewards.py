"""Reward acquisition throughput (LLMdoctor stage 1) on the bundled positivity set with the default
patient: response tokens scored per second under both faces, with and without prefix sharing, in the same
run. Also reports the fraction of non-zero rewards at the chosen theta.

    python bench/bench_rewards.py [--pairs 40] [--theta 0.5]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
import transformers

import fastdoctor
from fastdoctor.llmdoctor import data, rewards
from common import run_meta, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--theta", type=float, default=0.65)
    parser.add_argument("--faces", default="positivity")
    args = parser.parse_args()
    transformers.logging.disable_progress_bar()
    model, tokenizer = fastdoctor.load_model("default")
    pairs = data.bundled_preferences("train")[: args.pairs]
    settings = rewards.RewardSettings(theta=args.theta, faces=rewards.FACES[args.faces])
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for share in (True, False):
            started = time.perf_counter()
            summary = rewards.acquire_rewards(model, tokenizer, pairs, f"{folder}/r{share}.safetensors", settings,
                                              share_prefix=share, checkpoint_every=10**9)
            elapsed = time.perf_counter() - started
            rows.append({"prefix_sharing": "yes" if share else "no", "pairs": summary["pairs"],
                         "response_tokens": summary["response_tokens"],
                         "tokens_per_s": summary["response_tokens"] / elapsed, "seconds": elapsed,
                         "nonzero_fraction": summary["nonzero_fraction"]})
            print(rows[-1], flush=True)
    rows[0]["speedup"] = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]
    rows[1]["speedup"] = 1.0
    meta = run_meta("cpu")
    meta.update({"patient": "SmolLM2-135M-Instruct fp32", "faces": args.faces, "theta": args.theta,
                 "threads": torch.get_num_threads()})
    columns = [("prefix_sharing", "prefix sharing"), ("pairs", "pairs"), ("response_tokens", "response tokens"),
               ("tokens_per_s", "tokens/s"), ("speedup", "speed-up"), ("nonzero_fraction", "non-zero rewards")]
    json_path, md_path = write_results("rewards", "cpu", meta, rows, columns,
                                       note="Tokens scored under both faces per second; bundled train pairs.")
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
