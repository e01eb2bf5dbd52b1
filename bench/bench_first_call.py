"""What one guided reply costs from the command line, against the patient alone: the user's first call.

  cli   `fastdoctor generate` in a fresh process, greedy, B = 1: the tokens/s the command prints, with
        --doctor bundled:positivity and without it, interleaved, median of --runs each; the ratio of medians
  parts in this process: loading the doctor (fastdoctor.load_doctor: read and check the adapter file), the
        plan, building the stacked copy, and the first and a second guided call of the same length (their
        difference is what the first call pays beyond the decoding itself)

    python bench/bench_first_call.py [--runs 5] [--new-tokens 64] [--dtype float32] [--threads 2] [--quick]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

import torch

import fastdoctor
import transformers
from fastdoctor import shared_base
from common import add_options, dtype_name, run_meta, start, write_results

PROMPT = "I missed my bus this morning and then it started to rain. What should I do to cheer up?"
DOCTOR = "bundled:positivity"


def cli_tokens_per_second(doctor: bool, new_tokens: int, dtype: str, threads: int) -> float:
    command = [sys.executable, "-m", "fastdoctor.cli", "generate", "--prompt", PROMPT, "--temperature", "0",
               "--max-new-tokens", str(new_tokens), "--dtype", dtype, *(["--doctor", DOCTOR] if doctor else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    found = re.search(r"new tokens in [\d.]+ s: ([\d.]+) tokens/s", result.stderr)
    if found is None:
        raise RuntimeError(f"no tokens/s line in the command's output:\n{result.stderr[-2000:]}")
    return float(found.group(1))


def seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def in_process_parts(new_tokens: int, dtype: torch.dtype) -> dict:
    patient, tokenizer = fastdoctor.load_model("default", dtype=dtype)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    parts = {"load_doctor_ms": seconds(lambda: fastdoctor.load_doctor(DOCTOR, patient, tokenizer)) * 1e3}
    doctor = fastdoctor.load_doctor(DOCTOR, patient, tokenizer)
    parts["plan_ms"] = seconds(lambda: shared_base.plan(patient, [doctor])) * 1e3
    parts["stacked_copy_ms"] = seconds(lambda: shared_base.SharedBase(patient, [doctor], False)) * 1e3
    guided = lambda: fastdoctor.generate(patient, ids, doctors=[doctor], temperature=0.0,  # noqa: E731
                                         max_new_tokens=new_tokens)
    parts["first_call_s"], parts["second_call_s"] = seconds(guided), seconds(guided)
    parts["first_call_extra_ms"] = (parts["first_call_s"] - parts["second_call_s"]) * 1e3
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="CLI runs of each, interleaved (default: 5)")
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens per reply (default: 64)")
    add_options(parser, quick="2 runs of 8 tokens", dtype="weights (default: float32)", threads=2)
    args = parser.parse_args()
    start(args)
    transformers.logging.disable_progress_bar()
    if args.device != "cpu":
        sys.exit("bench_first_call measures the CPU command line; run it with --device cpu")
    runs, new_tokens = (2, 8) if args.quick else (args.runs, args.new_tokens)
    dtype = args.dtype or "float32"
    samples = {"patient": [], "guided": []}
    for _ in range(runs):
        for name in samples:
            samples[name].append(cli_tokens_per_second(name == "guided", new_tokens, dtype, args.threads))
    median = {name: sorted(values)[len(values) // 2] for name, values in samples.items()}
    parts = in_process_parts(new_tokens, getattr(torch, dtype))
    row = {"dtype": dtype, "new_tokens": new_tokens, "runs": runs, "patient_tok_s": median["patient"],
           "guided_tok_s": median["guided"], "ratio": median["guided"] / median["patient"],
           "patient_all": samples["patient"], "guided_all": samples["guided"], **parts}
    print(f"CLI: patient {median['patient']:.1f} tok/s, guided {median['guided']:.1f} tok/s: {row['ratio']:.2f}x; "
          + ", ".join(f"{k} {v:.3g}" for k, v in parts.items()))
    columns = [("dtype", "dtype"), ("new_tokens", "new tokens"), ("runs", "CLI runs"),
               ("patient_tok_s", "patient alone tok/s (median)"), ("guided_tok_s", "guided tok/s (median)"),
               ("ratio", "guided / patient"), ("load_doctor_ms", "load_doctor ms"), ("plan_ms", "plan ms"),
               ("stacked_copy_ms", "stacked copy ms"), ("first_call_extra_ms", "first call minus second, ms")]
    note = (f"`fastdoctor generate` B = 1, greedy, {new_tokens} new tokens, the default patient, {DOCTOR}; "
            f"the tokens/s the command prints (the generate call only), interleaved runs in fresh processes with "
            f"OMP_NUM_THREADS={args.threads}. The parts are timed once in this process, after the CLI runs.")
    write_results(f"first_call_{dtype_name(getattr(torch, dtype))}", args.device,
                  run_meta(args.device, new_tokens=new_tokens, quick=args.quick), [row], columns, note, out=args.out)


if __name__ == "__main__":
    main()
