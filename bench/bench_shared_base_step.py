"""Where a shared-base decode step's time goes: one cached decode step of the stacked copy of the default patient
with K rank-8 LoRA doctors, at B rows per model ((1 + K) * B stacked rows), in four configurations:

  patient   the patient's own forward on the (1 + K) * B rows: the floor, t((1 + K) B)
  no_lora   the stacked copy with each projection's adapter lists emptied: the cost of the stacking alone
  bound     the stacked copy as generate runs it eagerly (_C.BoundLinearSegmentedLora per nn.Linear)
  torch_ops the same op called through torch.ops with its lists (what a compile=True step traces)

So bound - no_lora is the LoRA deltas' own cost and torch_ops - bound what binding the op's arguments once saves.
Each round prefills a 51-token prompt, then times `steps` decode steps and keeps their median; every
configuration runs once a round, interleaved, and the table gives the median over rounds.

    python bench/bench_shared_base_step.py [--doctors 2] [--batch 1] [--dtype bfloat16] [--rounds 10] [--steps 24]
                                           [--device cpu|cuda] [--threads 2] [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import time

import torch

from fastdoctor import _C
from fastdoctor.kv_cache import cache_kwargs, output_cache
from fastdoctor.shared_base import SharedBase
from bench_shared_base import PROMPT, PROMPT_TOKENS, random_adapter
from common import (MODEL_CHOICES, Spread, Timing, add_options, load_patient, prompt_ids, resolve_dtype, run_meta,
                    start, synchronize, write_results)


def median_step(model, ids: torch.Tensor, steps: int, device: str) -> float:
    """Seconds of the median of `steps` cached decode steps after a prefill of ids."""
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache, token = output_cache(out), ids[:, -1:]
    times = []
    for _ in range(steps):
        synchronize(device)
        started = time.perf_counter()
        out = model(input_ids=token, **cache_kwargs(model, cache), use_cache=True)
        synchronize(device)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--doctors", type=int, default=2, help="adapter doctors K (default: 2)")
    parser.add_argument("--batch", type=int, default=1, help="rows per model B (default: 1)")
    parser.add_argument("--model", choices=MODEL_CHOICES, default="auto", help="the patient (see bench_generate.py)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default: 10)")
    parser.add_argument("--steps", type=int, default=24, help="timed decode steps per round (default: 24)")
    add_options(parser, quick="2 rounds of 3 steps", dtype="weights (default: bfloat16)", threads=2)
    args = parser.parse_args()
    start(args)
    device, rounds, steps = args.device, (2 if args.quick else args.rounds), (3 if args.quick else args.steps)
    dtype = torch.bfloat16 if args.dtype is None else resolve_dtype(args)
    patient, tokenizer, patient_label = load_patient(args.model, device, dtype)
    doctors = [random_adapter(patient, seed) for seed in range(args.doctors)]
    # The stacked copy with each kind of projection forward: the C++-bound op (eager decoding), the op through
    # torch.ops (what torch.compile traces, here run eagerly), and the bound op with no adapter (its floor).
    built = {name: SharedBase(patient, doctors, compiled=name == "torch_ops") for name in ("no_lora", "bound",
                                                                                            "torch_ops")}
    for stacked in built.values():
        stacked.load(doctors)
    segments = 1 + args.doctors
    for name, _ in built["no_lora"].projections:
        module = built["no_lora"].model.get_submodule(name)
        if type(module) is torch.nn.Linear:
            module.forward = _C.BoundLinearSegmentedLora(module.weight, module.bias, [], [], [], [], segments)
    ids = prompt_ids(tokenizer, PROMPT, PROMPT_TOKENS, patient.config.vocab_size).to(device)
    ids = ids.expand(segments * args.batch, -1).contiguous()
    models = {"patient": patient, **{name: stacked.model for name, stacked in built.items()}}
    names = ("patient", "no_lora", "bound", "torch_ops")
    samples: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for _ in range(rounds):
            for name in names:
                samples[name].append(median_step(models[name], ids, steps, device))
    timing = {name: Timing.of(values) for name, values in samples.items()}
    dtype_label = str(dtype).removeprefix("torch.")
    rows = [{"config": name, "dtype": dtype_label, "batch": args.batch, "doctors": args.doctors, "rounds": rounds,
             **timing[name].fields("step_ms"),
             "over_patient_ms": (timing[name].median - timing["patient"].median) * 1e3}
            for name in names]
    for row in rows:
        print(f"{row['config']:10s} {row['step_ms']:.2f} ms a step (+{row['over_patient_ms']:.2f} over the patient)")
    meta = run_meta(device, patient=patient_label, lora_rank=8, prompt_tokens=PROMPT_TOKENS, steps=steps,
                    quick=args.quick)
    columns = [("config", "configuration"), ("dtype", "dtype"), ("batch", "B"), ("doctors", "K"), ("rounds", "rounds"),
               Spread("step_ms", "decode step ms min / median / max"), ("over_patient_ms", "over the patient, ms")]
    note = (f"Patient: {patient_label} at (1+K)B stacked rows. Each round: a prefill, then the median of {steps} "
            "cached decode steps; the table gives min / median / max over the rounds (configurations interleaved).")
    write_results(f"shared_base_step_{dtype_label}_b{args.batch}_k{args.doctors}", device, meta, rows, columns,
                  note=note, out=args.out, title="shared_base_step")


if __name__ == "__main__":
    main()
