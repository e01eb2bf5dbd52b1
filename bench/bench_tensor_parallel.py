"""Guided decoding with a tensor-parallel patient against one process, in the same run.

The script starts `torchrun --nproc_per_node N` on itself (the worker) and, before it, one process: both decode
the same greedy reply from the default patient (or its architecture with random weights) alone and with K
rank-8 adapter doctors, and report tokens/s (median of --reps) and the all-reduce calls per decode step
(counted by wrapping torch.distributed.all_reduce). The adapter doctors must add no all-reduce: a row-parallel
projection's partial deltas ride its own reduction. On a CPU, gloo makes N ranks slower than one process; the
figure says what sharding costs here, not what it gains on GPUs.

    python bench/bench_tensor_parallel.py [--tp 3] [--doctors 2] [--new-tokens 32] [--reps 3] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import torch

from bench_shared_base import random_adapter
from common import add_options, run_meta, start, write_results

PROMPT = "I missed my bus this morning and then it started to rain. What should I do to cheer up?"


def measure(folder: str, tp: int | None, doctors: int, new_tokens: int, reps: int) -> dict:
    """{config: {tok_s, all_reduce_per_step}} on this process (a rank under torchrun when tp is set)."""
    import fastdoctor

    patient, tokenizer = fastdoctor.load_model(folder, tp_size=tp)
    single = patient if tp is None else fastdoctor.load_model(folder)[0]
    adapters = [random_adapter(single, seed) for seed in range(doctors)]  # the same doctors on every rank
    ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    calls = [0]
    if tp is not None:
        real = torch.distributed.all_reduce

        def counting(*args, **kwargs):
            calls[0] += 1
            return real(*args, **kwargs)

        torch.distributed.all_reduce = counting
    results = {}
    for name, chosen in (("patient alone", []), (f"+ {doctors} adapter doctors", adapters)):
        run = lambda: fastdoctor.generate(patient, ids, doctors=chosen, temperature=0.0,  # noqa: E731
                                          max_new_tokens=new_tokens)
        run()
        times = []
        for _ in range(reps):
            if tp is not None:
                torch.distributed.barrier()
            calls[0], started = 0, time.perf_counter()
            out = run()
            times.append(time.perf_counter() - started)
        steps = out.shape[1] - ids.shape[1]
        results[name] = {"tok_s": steps / sorted(times)[len(times) // 2], "new_tokens": steps,
                         "all_reduce_per_step": calls[0] / steps if tp is not None else 0.0}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tp", type=int, default=3,
                        help="tensor-parallel ranks (default: 3; SmolLM2-135M has 9 heads, 3 of them KV)")
    parser.add_argument("--doctors", type=int, default=2, help="adapter doctors K (default: 2)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--model", default="default", help="an HF folder, or 'default' (default: default)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # set on the torchrun ranks
    add_options(parser, quick="4 tokens, 1 rep", threads=1)
    args = parser.parse_args()
    start(args)
    new_tokens, reps = (4, 1) if args.quick else (args.new_tokens, args.reps)
    if args.worker:  # a torchrun rank: measure, rank 0 writes
        results = measure(args.model, args.tp, args.doctors, new_tokens, reps)
        if int(os.environ["RANK"]) == 0:
            pathlib.Path(args.worker).write_text(json.dumps(results))
        return
    if args.device != "cpu":
        sys.exit("bench_tensor_parallel runs gloo on the CPU here; on GPUs torchrun it with NCCL yourself")
    import transformers

    transformers.logging.disable_progress_bar()
    one = measure(args.model, None, args.doctors, new_tokens, reps)
    with tempfile.TemporaryDirectory() as scratch:
        out = pathlib.Path(scratch) / "ranks.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.tp),
                   __file__, "--tp", str(args.tp), "--doctors", str(args.doctors), "--new-tokens", str(new_tokens),
                   "--reps", str(reps), "--model", args.model, "--threads", str(args.threads or 1),
                   "--worker", str(out), *(["--quick"] if args.quick else [])]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or 1)}
        subprocess.run(command, check=True, env=env, capture_output=True, text=True)
        sharded = json.loads(out.read_text())
    rows = [{"config": name, "one_process_tok_s": one[name]["tok_s"], "tp_tok_s": sharded[name]["tok_s"],
             "ratio": sharded[name]["tok_s"] / one[name]["tok_s"],
             "all_reduce_per_step": sharded[name]["all_reduce_per_step"]} for name in one]
    for row in rows:
        print(f"{row['config']}: one process {row['one_process_tok_s']:.1f} tok/s, {args.tp} ranks "
              f"{row['tp_tok_s']:.1f} tok/s, {row['all_reduce_per_step']:.1f} all-reduces a step")
    columns = [("config", "configuration"), ("one_process_tok_s", "one process tok/s"),
               ("tp_tok_s", f"{args.tp} ranks tok/s"), ("ratio", "ratio"),
               ("all_reduce_per_step", "all-reduce calls per step")]
    note = (f"Greedy, B = 1, {new_tokens} new tokens, median of {reps}; {args.doctors} rank-8 adapter doctors on every "
            f"projection; {args.tp} gloo ranks under torchrun with {args.threads or 1} thread(s) each, against one "
            f"process with the same threads.")
    write_results(f"tensor_parallel_tp{args.tp}", args.device,
                  run_meta(args.device, model=args.model, tp=args.tp, quick=args.quick), rows, columns, note,
                  out=args.out)


if __name__ == "__main__":
    main()
