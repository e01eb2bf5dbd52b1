"""End-to-end guided decoding on the default patient (SmolLM2-135M-Instruct) with a truncated doctor,
all measured in the same run, on the same prompt and settings (top-p 0.9, temperature 1):

  (a) fastdoctor.generate: per-model KV caches, last-position prefill, the fused mix-and-sample op
  (a+) the same with compile=True: static KV caches and a torch.compile'd (weight-frozen) decode step per
      model; timed after a first call that compiles (its time is reported as compile_s)
  (b) a research-style loop: HF forward per model per step with a dynamic cache, full-logit prefill, the
      eager mixing and sampling chain (log_softmax per model, sort-based top-p, multinomial)
  (c) the same, with the doctor recomputing the whole prefix every step (no doctor KV cache)
  (d) the patient alone with HF generate
  forwards: the patient and doctor forwards alone (prefill + one cached forward per token), no sampling;
  overhead = (a) time / forwards time.

    python bench/bench_generate.py [--doctor-layers 6] [--quick]
"""
from __future__ import annotations

import argparse

import torch

import fastdoctor
import baselines
from common import forwards_only, run_meta, write_results
from common import median_wall_seconds as timed

PROMPT = "I missed my bus this morning and then it started to rain. What should I do to cheer up?"


def research_loop(patient, doctor, ids, new_tokens, weights, doctor_cache: bool):
    batch = ids.shape[0]
    temperature = torch.ones(batch)
    top_k, top_p = torch.zeros(batch, dtype=torch.int64), torch.full((batch,), 0.9)
    out_p = patient(ids, use_cache=True)
    out_d = doctor(ids, use_cache=doctor_cache)
    sequence = ids
    for _ in range(new_tokens):
        logits = [out_p.logits[:, -1], out_d.logits[:, -1]]
        token = baselines.eager_mix_sample_chain(logits, weights, temperature, top_k, top_p).unsqueeze(1)
        sequence = torch.cat([sequence, token], dim=1)
        out_p = patient(token, past_key_values=out_p.past_key_values, use_cache=True)
        if doctor_cache:
            out_d = doctor(token, past_key_values=out_d.past_key_values, use_cache=True)
        else:
            out_d = doctor(sequence, use_cache=False)
    return sequence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--doctor-layers", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="B = 1 and 8 with 16 new tokens only")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="model weights for every variant (bfloat16 uses AMX where the CPU has it)")
    parser.add_argument("--skip-compiled", action="store_true", help="leave out the compile=True variant")
    args = parser.parse_args()
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    patient, tokenizer = fastdoctor.load_model("default", dtype=dtype)
    doctor = fastdoctor.make_doctor(patient, args.doctor_layers)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)["input_ids"]
    meta = run_meta("cpu")
    cases = [(1, 16), (8, 16)] if args.quick else [(1, 64), (8, 64), (1, 256), (8, 256)]
    rows = []
    with torch.inference_mode():
        for batch, new_tokens in cases:
            ids = prompt.expand(batch, -1).contiguous()
            weights = torch.tensor([[1.0, 0.5]]).expand(batch, 2)
            reps = 3 if new_tokens <= 64 else 1
            fastdoctor.generate(patient, ids, doctors=[doctor], betas=[0.5], max_new_tokens=4, top_p=0.9, seed=0)
            guided = dict(doctors=[doctor], betas=[0.5], max_new_tokens=new_tokens, top_p=0.9, seed=0)
            t = {"fastdoctor": timed(lambda: fastdoctor.generate(patient, ids, **guided), reps)}
            compile_s = float("nan")
            if not args.skip_compiled:
                compile_s = timed(lambda: fastdoctor.generate(patient, ids, compile=True, **guided), 1)
                t["fastdoctor_compiled"] = timed(lambda: fastdoctor.generate(patient, ids, compile=True, **guided),
                                                 reps)
            t.update({
                "research": timed(lambda: research_loop(patient, doctor, ids, new_tokens, weights, True), reps),
                "no_doctor_cache": timed(lambda: research_loop(patient, doctor, ids, new_tokens, weights, False),
                                         reps),
                "hf_patient_alone": timed(lambda: patient.generate(ids, attention_mask=torch.ones_like(ids),
                                                                   do_sample=True, top_p=0.9, top_k=0,
                                                                   max_new_tokens=new_tokens,
                                                                   min_new_tokens=new_tokens,
                                                                   pad_token_id=tokenizer.pad_token_id), reps),
                "forwards": timed(lambda: forwards_only((patient, doctor), ids, new_tokens), reps),
            })
            t.setdefault("fastdoctor_compiled", float("nan"))
            tokens = batch * new_tokens
            row = {"batch": batch, "new_tokens": new_tokens, "reps": reps, "compile_s": compile_s,
                   **{f"{k}_tok_s": tokens / v for k, v in t.items()},
                   "overhead": t["fastdoctor"] / t["forwards"],
                   "speedup_vs_research": t["research"] / t["fastdoctor"],
                   "speedup_vs_no_doctor_cache": t["no_doctor_cache"] / t["fastdoctor"],
                   "compiled_speedup_vs_research": t["research"] / t["fastdoctor_compiled"],
                   "compiled_speedup_vs_no_doctor_cache": t["no_doctor_cache"] / t["fastdoctor_compiled"]}
            rows.append(row)
            print(f"B={batch} new={new_tokens}: fastdoctor {row['fastdoctor_tok_s']:.1f} tok/s (compiled "
                  f"{row['fastdoctor_compiled_tok_s']:.1f}, x{row['compiled_speedup_vs_research']:.2f} vs research, "
                  f"x{row['compiled_speedup_vs_no_doctor_cache']:.2f} vs no doctor cache; compile "
                  f"{compile_s:.0f} s), research "
                  f"{row['research_tok_s']:.1f}, no doctor cache {row['no_doctor_cache_tok_s']:.1f}, HF patient "
                  f"alone {row['hf_patient_alone_tok_s']:.1f}; overhead {row['overhead']:.3f}, "
                  f"x{row['speedup_vs_research']:.2f} vs research, x{row['speedup_vs_no_doctor_cache']:.2f} vs "
                  f"no doctor cache", flush=True)
    meta.update({"patient": f"SmolLM2-135M-Instruct ({args.dtype})", "doctor_layers": args.doctor_layers,
                 "top_p": 0.9, "prompt_tokens": prompt.shape[1]})
    columns = [("batch", "B"), ("new_tokens", "new tokens"), ("fastdoctor_tok_s", "(a) fastdoctor tok/s"),
               ("fastdoctor_compiled_tok_s", "(a+) compiled tok/s"),
               ("research_tok_s", "(b) research loop tok/s"), ("no_doctor_cache_tok_s", "(c) no doctor cache tok/s"),
               ("hf_patient_alone_tok_s", "(d) HF patient alone tok/s"), ("overhead", "overhead (a)/forwards"),
               ("speedup_vs_research", "(a)/(b)"), ("speedup_vs_no_doctor_cache", "(a)/(c)"),
               ("compiled_speedup_vs_research", "(a+)/(b)"), ("compiled_speedup_vs_no_doctor_cache", "(a+)/(c)"),
               ("compile_s", "compile s")]
    json_path, md_path = write_results(
        "generate" if args.dtype == "float32" else f"generate_{args.dtype}", "cpu", meta, rows, columns,
        note=f"Patient SmolLM2-135M-Instruct {args.dtype} + a {args.doctor_layers}-layer truncated doctor (beta 0.5), "
             f"top-p 0.9, prompt {prompt.shape[1]} tokens; median of 3 runs at 64 new tokens, 1 run at 256. "
             "tok/s counts every row's tokens; overhead = (a) / the two models' forwards alone.")
    print(f"\nwrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
