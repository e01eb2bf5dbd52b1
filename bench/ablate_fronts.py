"""What moves TFPO's front: the default recipe against one change at a time, on one dimension's held-out
prompts (both judges, distinct-2, the patient's perplexity), at two guidance strengths.

  python bench/ablate_fronts.py [--dimension concision] [--variants flow_rewards autocast_none theta_0.5 ...]
                                [--strengths 1 4] [--conventions normalised advantage]
                                [--advantage-strengths 0.5 1 2] [--name ablations_concision] [--quick]

Variants (each trained once, cached under $FASTDOCTOR_CACHE/ablations/<digest>/<variant>/):
  default      the bundled doctor (the quickstart's recipe: 48 steps x 8 pairs, lr 5e-4, theta 0.65, kappa 1,
               the reference flow, bf16 autocast where native);
  flow_rewards the rewards flow with its fitted value ramp, in float32 (the recipe before the reference flow);
  autocast_<x> the default recipe trained with autocast x ("none": float32; "bf16");
  ramp_off     the rewards flow without the value head's position ramp;
  theta_<x>    stage-1 rewards thresholded at x instead of 0.65;
  kappa_<x>    kappa = x instead of 1 in log Q;
  steps_x3     three times the training steps (144);
  beta_r_<x>   GenARM's ARM with beta_r = x instead of 0.05 (a GenARM variant, for comparison).
Decoding: each TFPO variant under every --conventions (fastdoctor.fronts: "normalised" at --strengths,
"advantage" at --advantage-strengths), GenARM variants under "normalised"; top-p 0.9, T 1, 48 tokens.
Writes <out>/<name>_<hardware>.{json,md}; the name defaults to ablations_<dimension>, and another name keeps an
earlier table of other variants beside the new one.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys
import tempfile
import time

from common import add_options, run_meta, start, write_results
from eval_fronts import Scorer


def _say(message: str) -> None:
    print(f"[ablate] {message}", file=sys.stderr, flush=True)


def rewards_flow(variant: str) -> bool:
    """The variants of the rewards-flow recipe (trained in float32, as it was measured, and decoded under the
    normalised convention, its own)."""
    return variant in ("flow_rewards", "ramp_off") or variant.startswith(("kappa_", "theta_"))


def train_variant(patient, tokenizer, pairs, root: pathlib.Path, dimension: str, variant: str, steps: int):
    """The doctor folder of `variant`, trained unless cached (or the bundled one for 'default')."""
    from fastdoctor.datasets import bundled_doctor
    from fastdoctor.llmdoctor import recipes, tfpo
    from fastdoctor.llmdoctor.rewards import FACES, RewardSettings, acquire_rewards
    from fastdoctor.models import native_bf16
    from fastdoctor.train import TrainConfig

    if variant == "default" and steps == 48:
        return bundled_doctor(dimension)
    theta = float(variant.split("_")[1]) if variant.startswith("theta_") else 0.65
    rewards_path = root / f"rewards_theta{theta}.safetensors"
    if theta == RewardSettings().theta and steps > 1:  # the default rewards: the quickstart's cache has them
        from fastdoctor.llmdoctor import quickstart

        rewards_path = quickstart.rewards_cache(quickstart.QuickstartSettings(faces=dimension), dimension)
    if not rewards_path.exists():
        _say(f"stage-1 rewards, theta {theta}")
        acquire_rewards(patient, tokenizer, pairs, rewards_path, RewardSettings(faces=FACES[dimension], theta=theta),
                        patient_name="default")
    folder = root / variant
    if (folder / "doctor" / "doctor.json").exists():
        return folder / "doctor"
    total = steps * 3 if variant == "steps_x3" else steps
    autocast = variant.split("_")[1] if variant.startswith("autocast_") else "bf16" if native_bf16("cpu") else "none"
    if rewards_flow(variant):
        autocast = "none"
    config = TrainConfig(steps=total, batch_size=8 if steps > 1 else 2, lr=5e-4, warmup_steps=max(total // 10, 1),
                         log_every=8, checkpoint_every=8, seed=0, autocast=autocast)
    examples = recipes.scored_examples(rewards_path, tokenizer, patient)
    lm = recipes.build_lm(patient, recipes.DoctorInit(kind="full"), seed=0)
    _say(f"training {variant} ({total} steps, autocast {autocast})")
    if variant.startswith("beta_r_"):
        recipes.train_genarm(lm, tokenizer, examples, folder, config, beta_r=float(variant.split("_")[2]))
        return folder / "doctor"
    settings = tfpo.TFPOSettings(flow="rewards" if rewards_flow(variant) else "reference",
                                 kappa=float(variant.split("_")[1]) if variant.startswith("kappa_") else 1.0)
    recipes.train_tfpo(lm, tokenizer, examples, folder, config, settings,
                       value_ramp=rewards_flow(variant) and variant != "ramp_off")
    return folder / "doctor"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dimension", default="concision", choices=["positivity", "concision"])
    parser.add_argument("--variants", nargs="*", default=["flow_rewards", "autocast_none"])
    parser.add_argument("--strengths", type=float, nargs="+", default=[1.0, 4.0], help="under 'normalised'")
    parser.add_argument("--advantage-strengths", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--conventions", nargs="+", default=["normalised", "advantage"],
                        choices=["normalised", "advantage"], help="TFPO variants are decoded under each")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--name", default=None, help="results file stem (default: ablations_<dimension>)")
    add_options(parser, quick="variants trained 1 step on 4 pairs in a temporary folder, 2 prompts, 4 tokens", threads=2)
    args = parser.parse_args()
    start(args)
    max_new_tokens = 48
    if args.quick:
        args.steps, args.samples, max_new_tokens, args.strengths, args.advantage_strengths = 1, 1, 4, [1.0], [1.0]
    import torch
    import transformers

    from fastdoctor import fronts, quality
    from fastdoctor.llmdoctor.data import bundled_preferences
    from fastdoctor.llmdoctor.doctor import load_doctor
    from fastdoctor.models import cache_dir, decode_dtype, load_model

    transformers.logging.disable_progress_bar()
    began = time.time()
    pairs = bundled_preferences("train", args.dimension)[: 4 if args.quick else None]
    key = hashlib.sha256(json.dumps({"dimension": args.dimension, "steps": args.steps, "pairs": len(pairs)},
                                    sort_keys=True).encode()).hexdigest()[:12]
    scratch = tempfile.TemporaryDirectory() if args.quick else None
    root = pathlib.Path(scratch.name) if scratch else cache_dir() / "ablations" / key
    patient, tokenizer = load_model("default", device=args.device)
    dtype = decode_dtype(args.device)
    sampler = patient if dtype == torch.float32 else load_model("default", device=args.device, dtype=dtype)[0]
    prompts = [p.prompt for p in bundled_preferences("test")][: 2 if args.quick else None]
    scorer = Scorer(patient)
    strengths = {"normalised": args.strengths, "advantage": args.advantage_strengths}
    rows = []
    for variant in ["default", *args.variants]:
        folder = train_variant(patient, tokenizer, pairs, root, args.dimension, variant, args.steps)
        doctor = load_doctor(folder, tokenizer=tokenizer, patient=sampler).lm
        conventions = ["normalised"] if variant.startswith("beta_r_") or rewards_flow(variant) else args.conventions
        points = [(c, g) for c in conventions for g in strengths[c]]
        vectors = [fronts.guidance_weights([g], c) for c, g in points]
        done = quality.sample_weight_vectors(sampler, tokenizer, prompts, vectors, doctors=[doctor],
                                             samples=args.samples, seed=0, max_new_tokens=max_new_tokens, top_p=0.9)
        for (convention, g), completions in zip(points, done):
            row = scorer.row(variant, f"g={g:g}", completions, g=g, convention=convention)
            rows.append(row)
            _say(f"{variant} {convention} g={g}: positivity {row['positivity']:.3f} concision {row['concision']:.3f} "
                 f"distinct-2 {row['distinct_2']:.3f} perplexity {row['perplexity']:.1f}")
    patient_row = scorer.row("patient alone", "-", quality.sample_completions(
        sampler, tokenizer, prompts, samples=args.samples, seed=0, max_new_tokens=max_new_tokens, top_p=0.9))
    rows.insert(0, {**patient_row, "convention": "-"})
    for row in rows:
        for k in ("positivity", "concision"):
            row[f"{k}_text"] = f"{row[k]:.3f} ± {row[k + '_se']:.3f}"
    meta = run_meta(args.device, dimension=args.dimension, prompts=len(prompts), samples=args.samples,
                    strengths=strengths, conventions=args.conventions, steps=args.steps,
                    seconds=round(time.time() - began, 1), quick=args.quick, dtype=str(dtype))
    columns = [("method", "variant"), ("convention", "convention"), ("point", "strength"),
               ("positivity_text", "positivity (VADER)"), ("concision_text", "concision"), ("distinct_2", "distinct-2"),
               ("perplexity", "patient perplexity"), ("mean_tokens", "mean new tokens")]
    _, md = write_results(args.name or f"ablations_{args.dimension}", args.device, meta, rows, columns, out=args.out,
                          title=f"TFPO ablations on {args.dimension}" + (" (--quick smoke run)" if args.quick else ""),
                          note=f"{len(prompts)} held-out prompts x {args.samples} samples, strengths under each row's "
                               f"convention (normalised: alpha = 1/(1+g), beta = g/(1+g); advantage: alpha = 1-g, "
                               f"beta = g), top-p 0.9, T 1, {max_new_tokens} new tokens, sampled in {dtype}.")
    print(md.read_text())
    if scratch:
        scratch.cleanup()


if __name__ == "__main__":
    main()
