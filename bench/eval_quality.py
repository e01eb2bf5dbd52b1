"""Alignment quality on the bundled positivity task (held-out prompts). Sample j of every prompt uses seed j
in every method, so a steered sample is paired with the patient's sample of the same seed (win rate):

  1. the patient alone, greedy and top-p (N samples per prompt);
  2. best-of-N by VADER over the patient's own N top-p samples;
  3. a control: the untrained copy as the doctor (alpha = beta = 1 is then p_patient^2, i.e. temperature
     1/2), which separates what training learned from what the product's sharpening does;
  4. GenARM: the same doctor architecture trained with GenARM's Bradley-Terry ARM loss, decoding
     p_patient * p_arm^alpha;
  5. LLMdoctor: the TFPO doctor, with a beta sweep and alpha = beta = 0.5 (the quickstart's doctor; trained
     here if not cached); with --small-doctor, also TFPO on a distilled half-depth doctor (weak-to-strong).

Reports mean VADER reward +- standard error, win rate against the patient's paired samples, distinct-2/3,
the patient's perplexity of the outputs and tokens/s. Writes <out>/quality_<hardware>.{json,md} and a
reward-against-diversity PNG. The rewards and doctors are the quickstart's (cached, trained here if absent);
a --quick run trains throwaway ones in a temporary folder.

  python bench/eval_quality.py [--base-samples 4] [--samples 2] [--betas 0.5 1 2] [--arm-alphas 1]
                               [--small-doctor ~/.cache/fastdoctor/distilled/<tag>/model]
                               [--device cpu|cuda] [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import tempfile

from common import add_options, display_path, result_stem, run_meta, start, write_results


def _doctor(kind: str, patient, tokenizer, examples, root: pathlib.Path, steps: int, lr: float, small_from=None, *,
            batch_size: int = 8):
    from fastdoctor.llmdoctor import recipes
    from fastdoctor.llmdoctor.doctor import load_doctor
    from fastdoctor.train import TrainConfig

    saved = root / "doctor"
    if not (saved / "doctor.json").exists():
        config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=max(steps // 10, 1), log_every=4,
                             checkpoint_every=8)
        if small_from is not None:  # a distilled small doctor (bench_distill.py's saved model): all weights train
            from transformers import AutoModelForCausalLM

            lm = AutoModelForCausalLM.from_pretrained(small_from).to(next(patient.parameters()).device)
            for p in lm.parameters():
                p.requires_grad_(True)
        else:
            lm = recipes.build_lm(patient, recipes.DoctorInit(kind="full"))
        if kind == "genarm":
            recipes.train_genarm(lm, tokenizer, examples, root, config)
        else:
            recipes.train_tfpo(lm, tokenizer, examples, root, config)
    return load_doctor(saved, tokenizer=tokenizer, device=next(patient.parameters()).device, patient=patient)


def plot(rows: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for row in rows:
        axis.errorbar(row["distinct_2"], row["reward"], yerr=row["reward_se"], fmt="o", capsize=3)
        axis.annotate(row["method"], (row["distinct_2"], row["reward"]), fontsize=7, xytext=(4, 4),
                      textcoords="offset points")
    axis.set_xlabel("distinct-2 (diversity)")
    axis.set_ylabel("VADER reward (mean ± SE)")
    axis.set_title("positivity: reward against diversity (held-out prompts)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2, help="samples per prompt for the steered methods")
    parser.add_argument("--base-samples", type=int, default=4, help="the patient's samples per prompt (best-of-N)")
    parser.add_argument("--betas", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--arm-alphas", type=float, nargs="+", default=[1.0])
    parser.add_argument("--steps", type=int, default=48, help="training steps of each doctor (if not cached)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--small-doctor", default=None, metavar="MODEL",
                        help="also TFPO-train this distilled small doctor (bench_distill.py's saved model) and add its rows")
    # fp32 throughout: the doctors train (AdamW on fp32 weights; bf16 autocast on CUDA), so no --dtype.
    add_options(parser, quick="rewards for 2 train pairs, doctors trained 1 step of 2 pairs in a temporary folder, "
                              "2 held-out prompts, patient x 2 and steered x 1 samples of 4 tokens, one beta")
    args = parser.parse_args()
    start(args)
    if args.quick:
        args.steps, args.base_samples, args.samples, args.max_new_tokens = 1, 2, 1, 4
        args.betas, args.arm_alphas = [1.0], [1.0]
    import transformers

    from fastdoctor import quality
    from fastdoctor.llmdoctor import quickstart
    from fastdoctor.llmdoctor.data import bundled_preferences
    from fastdoctor.models import cache_dir, load_model
    from fastdoctor.llmdoctor.recipes import scored_examples
    from fastdoctor.llmdoctor.rewards import FACES, RewardSettings, acquire_rewards

    transformers.logging.disable_progress_bar()
    settings = quickstart.QuickstartSettings(steps=args.steps)
    scratch = tempfile.TemporaryDirectory() if args.quick else None  # a smoke run leaves the cache alone
    # Shares the quickstart's rewards and TFPO doctor.
    root = pathlib.Path(scratch.name) if scratch else cache_dir() / "quickstart" / settings.digest()
    train_batch = 2 if args.quick else 8
    patient, tokenizer = load_model("default", device=args.device)
    rewards_path = root / "rewards.safetensors" if scratch else quickstart.rewards_cache(settings, "positivity")
    if not rewards_path.exists():
        acquire_rewards(patient, tokenizer, bundled_preferences("train")[: 2 if args.quick else None], rewards_path,
                        RewardSettings(faces=FACES[settings.faces]), patient_name="default")
    examples = scored_examples(rewards_path, tokenizer, patient)
    tfpo_doctor = _doctor("tfpo", patient, tokenizer, examples, root / "tfpo", args.steps, settings.lr,
                          batch_size=train_batch)
    arm = _doctor("genarm", patient, tokenizer, examples, root / "genarm", args.steps, settings.lr,
                  batch_size=train_batch)
    prompts = [p.prompt for p in bundled_preferences("test")][: 2 if args.quick else None]
    sampling = dict(seed=0, max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=0.9)
    print(f"[quality] {len(prompts)} prompts: patient x {args.base_samples}, steered x {args.samples}",
          file=sys.stderr, flush=True)
    base = quality.sample_completions(patient, tokenizer, prompts, samples=args.base_samples, **sampling)
    base_row = quality.summarise(f"patient, top-p 0.9 ({args.base_samples} samples)", base, patient)
    # Steered methods draw samples 0..S-1 with the same seeds as the patient's first S samples: paired.
    paired = [base_row["scores"][i * args.base_samples + j] for i in range(len(prompts)) for j in range(args.samples)]
    rows = [base_row]
    greedy = quality.sample_completions(patient, tokenizer, prompts, samples=1, **{**sampling, "temperature": 0.0})
    rows.append(quality.summarise("patient, greedy", greedy, patient,
                                   baseline_scores=[base_row["scores"][i * args.base_samples] for i in range(len(prompts))]))
    best, best_scores = quality.best_of(base, base_row["scores"])
    rows.append(quality.summarise(f"best-of-{args.base_samples} (VADER)", best, patient, scores=best_scores,
                                   baseline_scores=base_row["scores"]))
    steered = [("control: untrained copy (beta 1)", patient, 1.0, 1.0)]
    steered += [(f"GenARM (alpha {a})", arm.lm, 1.0, a) for a in args.arm_alphas]
    steered += [(f"LLMdoctor TFPO (beta {b})", tfpo_doctor.lm, 1.0, b) for b in args.betas]
    steered += [("LLMdoctor TFPO (alpha 0.5, beta 0.5)", tfpo_doctor.lm, 0.5, 0.5)]
    small = None
    if args.small_doctor:  # the weak-to-strong setting: lr / 5 as in the quickstart, since every weight trains
        small = _doctor("tfpo", patient, tokenizer, examples, root / "tfpo_small", args.steps, settings.lr / 5,
                        small_from=args.small_doctor, batch_size=train_batch)
        layers = small.lm.config.num_hidden_layers
        steered += [(f"LLMdoctor TFPO, {layers}-layer distilled doctor (beta {b})", small.lm, 1.0, b) for b in (0.5, 1.0)]
        steered += [(f"LLMdoctor TFPO, {layers}-layer distilled doctor (alpha 0.5, beta 0.5)", small.lm, 0.5, 0.5)]
    for name, doctor_lm, alpha, beta in steered:
        print(f"[quality] {name}", file=sys.stderr, flush=True)
        done = quality.sample_completions(patient, tokenizer, prompts, doctors=[doctor_lm], alpha=alpha, betas=[beta],
                                           samples=args.samples, **sampling)
        rows.append(quality.summarise(name, done, patient, baseline_scores=paired))
    # Fluency of the trained doctors themselves (decision 8), teacher-forced on held-out patient text.
    from fastdoctor.llmdoctor import distill

    held_out = distill.chat_sequences(tokenizer, bundled_preferences("test"), responses="chosen")[: len(prompts)]
    doctors = [("TFPO doctor", tfpo_doctor.lm), ("GenARM ARM", arm.lm)] + ([("small TFPO doctor", small.lm)] if small else [])
    agreement = {name: distill.agreement(patient, lm, held_out) for name, lm in doctors}
    print(f"[quality] doctor agreement with the patient: {agreement}", file=sys.stderr, flush=True)
    for row in rows:
        row.setdefault("win_rate", float("nan"))
        row["reward_text"] = f"{row['reward']:.3f} ± {row['reward_se']:.3f}"
    small_label = display_path(args.small_doctor) if args.small_doctor else None
    meta = run_meta(args.device, prompts=len(prompts), samples_per_prompt=args.samples,
                    patient_samples_per_prompt=args.base_samples, max_new_tokens=args.max_new_tokens,
                    doctor_training_steps=args.steps, doctor_train_batch=train_batch,
                    quickstart_settings=dataclasses.asdict(settings), doctor_agreement=agreement,
                    small_doctor=small_label, quick=args.quick)
    columns = [("method", "method"), ("reward_text", "VADER reward (mean ± SE)"), ("win_rate", "win rate vs patient (paired seeds)"),
               ("distinct_2", "distinct-2"), ("distinct_3", "distinct-3"), ("perplexity", "patient perplexity"),
               ("tokens_per_s", "tokens/s"), ("samples", "samples")]
    title = "quality (--quick smoke run: throwaway doctors, 4 tokens)" if args.quick else "quality"
    _, md_path = write_results(
        "quality", args.device, meta, [{k: v for k, v in r.items() if k != "scores"} for r in rows], columns,
        out=args.out, title=title,
        note=f"Bundled positivity task, {len(prompts)} held-out prompts, top-p 0.9, temperature 1, "
             f"{args.max_new_tokens} new tokens; doctors are LoRA copies of the patient trained {args.steps} "
             f"steps x {train_batch} pairs (TFPO with the fitted value ramp)" +
             (f", except the distilled doctor ({small_label}, all weights trained)" if small else "") +
             "; tokens/s: one timed sampling run per method. Doctors against the patient (teacher-forced on "
             "held-out patient text): " +
             "; ".join(f"{name}: greedy agreement {a['greedy_agreement']:.3f}, perplexity {a['perplexity']:.1f}"
                       for name, a in agreement.items()) + ".")
    plot(rows, result_stem(args.out, "quality", args.device).with_suffix(".png"))
    print(md_path.read_text())
    if scratch:
        scratch.cleanup()


if __name__ == "__main__":
    main()
