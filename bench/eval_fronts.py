"""Preference fronts on the two bundled dimensions (positivity: VADER; concision: judges.concision_score), on
the 45 held-out prompts, against GenARM, DPO, Rewarded Soups and best-of-N.

  python bench/eval_fronts.py [--samples 2] [--patient-samples 8] [--strength 2] [--steps 48] [--quick]

Models (one per dimension, each a rank-8 LoRA of the patient, 48 steps x 8 pairs, lr 5e-4, seed 0; cached
under $FASTDOCTOR_CACHE/fronts/<settings digest>/):
  TFPO     the bundled doctors (datasets/doctors/<dimension>: the quickstart's recipe on that dimension, the
           "reference" flow);
  TFPO, rewards flow   the ablation: the same pairs and budget with flow="rewards" and the fitted value ramp,
           trained in float32 (the recipe before the reference flow), decoded under "normalised";
  GenARM   an ARM trained with GenARM's loss (beta_r 0.05) on the same pairs;
  DPO      TRL's DPOTrainer (fastdoctor.dpo, beta 0.1) on the same pairs; Soups interpolate the two.

Guidance strengths g_i become weights by a convention (fastdoctor.fronts): "normalised" (raw strengths
against the patient's 1, normalised by 1 + sum g: GenARM's temperature 1 / (1 + sum alpha); GenARM, and the
rewards-flow ablation) or "advantage" (log p + sum g_i (log p_i - log p): alpha = 1 - sum g, beta_i = g_i, for
doctors whose reference is the patient). TFPO runs under both (--tfpo-conventions), so the run decides which
one TFPO uses. Sampled at temperature 1, top-p 0.9, 48 new tokens, in bf16 where native (the judges and the
patient's perplexity in fp32).

  2-D fronts: the 11 weight vectors (w, 1 - w), w = 0, 0.1, ..., 1: TFPO and GenARM with g = strength * (w,
    1 - w) (one batch carries all 11 vectors: per-row weights), Soups at w, best-of-4 under w * VADER + (1 - w) *
    concision over the patient's own samples; the patient alone. Hypervolume with the reference point at the
    worst mean of each axis over every point of every method.
  1-D fronts (positivity): VADER against distinct-2 and against the patient's perplexity, for TFPO over
    g in {0.25, 0.5, 1, 2, 4, 8} (normalised) or {0.5, 1, 1.5, 2, 2.5, 3} (advantage), GenARM over
    {0.1, 0.25, 0.5, 1, 2}, DPO, best-of-N for N in {1, 2, 4, 8}.
  Wall time of the TFPO 2-D front in one call against one call per weight vector (same tokens; --skip-timing
  leaves it out).

Writes <out>/fronts_<hardware>.{json,md} and two PNGs (fronts_2d_, fronts_positivity_).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import pathlib
import sys
import tempfile
import time

from common import add_options, result_stem, run_meta, start, write_results

TFPO_STRENGTHS = {"normalised": (0.25, 0.5, 1.0, 2.0, 4.0, 8.0), "advantage": (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)}
GENARM_STRENGTHS = (0.1, 0.25, 0.5, 1.0, 2.0)
BEST_OF = (1, 2, 4, 8)


def _say(message: str) -> None:
    print(f"[fronts] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Budget:
    steps: int = 48
    batch_size: int = 8
    lr: float = 5e-4
    beta_r: float = 0.05
    seed: int = 0
    pair_limit: int | None = None  # --quick: the first few pairs only

    def digest(self) -> str:
        from fastdoctor import __version__
        from fastdoctor.llmdoctor.data import DATASETS

        hashes = {d: json.loads((DATASETS / f"{d}.meta.json").read_text())["sha256"] for d in ("positivity", "concision")}
        blob = json.dumps({"budget": dataclasses.asdict(self), "data": hashes, "version": __version__}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def train_models(patient, tokenizer, root: pathlib.Path, budget: Budget, dimension: str, quick: bool) -> dict:
    """{'tfpo', 'genarm': doctor folders, 'dpo': DPO folder} for one dimension, trained unless cached."""
    from fastdoctor import dpo
    from fastdoctor.datasets import bundled_doctor
    from fastdoctor.llmdoctor import quickstart, recipes, tfpo
    from fastdoctor.llmdoctor.data import bundled_preferences
    from fastdoctor.llmdoctor.rewards import FACES, RewardSettings, acquire_rewards
    from fastdoctor.train import TrainConfig

    pairs = bundled_preferences("train", dimension)[: budget.pair_limit]
    config = TrainConfig(steps=budget.steps, batch_size=budget.batch_size, lr=budget.lr,
                         warmup_steps=max(budget.steps // 10, 1), log_every=8, checkpoint_every=8, seed=budget.seed)
    folders = {"tfpo": bundled_doctor(dimension), "genarm": root / f"genarm_{dimension}" / "doctor",
               "dpo": root / f"dpo_{dimension}"}
    if not (folders["genarm"] / "doctor.json").exists():
        _say(f"{dimension}: GenARM ARM, {budget.steps} steps of {budget.batch_size} pairs")
        lm = recipes.build_lm(patient, recipes.DoctorInit(kind="full"), seed=budget.seed)
        examples = recipes.token_pairs(tokenizer, pairs, patient)  # ids only: the ARM's loss reads no rewards
        recipes.train_genarm(lm, tokenizer, examples, root / f"genarm_{dimension}", config, beta_r=budget.beta_r)
    if not (folders["dpo"] / "adapter" / "adapter_config.json").exists():
        _say(f"{dimension}: DPO (TRL), {budget.steps} steps of {budget.batch_size} pairs")
        dpo.train_dpo(patient, tokenizer, pairs, folders["dpo"],
                      dpo.DPOSettings(steps=budget.steps, batch_size=budget.batch_size, lr=budget.lr,
                                      warmup_steps=max(budget.steps // 10, 1), seed=budget.seed))
    # Stage 1 for the TFPO doctors trained here: the quickstart's rewards cache (make_bundled_doctor fills it).
    rewards_path = (root / f"rewards_{dimension}.safetensors" if quick else
                    quickstart.rewards_cache(quickstart.QuickstartSettings(faces=dimension), dimension))
    if not rewards_path.exists():
        _say(f"{dimension}: stage-1 rewards for the TFPO ablation")
        acquire_rewards(patient, tokenizer, pairs, rewards_path, RewardSettings(faces=FACES[dimension]),
                        patient_name="default")
    examples = recipes.scored_examples(rewards_path, tokenizer, patient)
    folders["tfpo_rewards"] = root / f"tfpo_rewards_{dimension}" / "doctor"
    if not (folders["tfpo_rewards"] / "doctor.json").exists():
        _say(f"{dimension}: TFPO with the rewards flow and its value ramp (the ablation), {budget.steps} steps")
        recipes.train_tfpo(recipes.build_lm(patient, recipes.DoctorInit(kind="full"), seed=budget.seed), tokenizer,
                           examples, root / f"tfpo_rewards_{dimension}", config, tfpo.TFPOSettings(flow="rewards"),
                           value_ramp=True)
    if quick:  # a throwaway reference-flow doctor, so the smoke run exercises the default training path too
        recipes.train_tfpo(recipes.build_lm(patient, recipes.DoctorInit(kind="full")), tokenizer, examples,
                           root / f"tfpo_{dimension}", dataclasses.replace(config, autocast="bf16"))
        folders["tfpo"] = root / f"tfpo_{dimension}" / "doctor"
    return folders


class Scorer:
    """Both judges, distinct-2 and the fp32 patient's perplexity of a Completions, as one row."""

    def __init__(self, judge_patient):
        self.patient = judge_patient

    def row(self, method: str, point: str, completions, **extra) -> dict:
        from fastdoctor import judges, quality

        texts = [t for per_prompt in completions.texts for t in per_prompt]
        tokens = [t for per_prompt in completions.tokens for t in per_prompt]
        row = {"method": method, "point": point, "samples": len(texts)}
        for dimension in ("positivity", "concision"):
            scores = judges.judge(dimension)(texts)
            row[dimension], row[f"{dimension}_se"] = quality.mean_and_standard_error(scores)
        row["distinct_2"] = quality.distinct_n(tokens, 2)
        row["perplexity"] = quality.patient_perplexity(self.patient, completions)
        row["mean_tokens"] = sum(map(len, tokens)) / max(len(tokens), 1)
        return {**row, **extra}


def first_samples(completions, count: int):
    """The first `count` samples of every prompt (same seeds), as a Completions of their own."""
    return type(completions)([t[:count] for t in completions.texts], [t[:count] for t in completions.tokens],
                             completions.prompt_ids, completions.seconds, completions.new_tokens)


def best_of_rows(scorer, base, scores: dict, per: int, weights) -> list[dict]:
    """Best-of-`per` over the patient's first `per` samples, under w * VADER + (1 - w) * concision."""
    from fastdoctor import quality

    n = len(base.texts[0])
    rows = []
    for w in weights:
        combined = [w * a + (1 - w) * b for a, b in zip(scores["positivity"], scores["concision"])]
        first = first_samples(base, per)
        picked = [combined[i * n + j] for i in range(len(base.texts)) for j in range(per)]
        best, _ = quality.best_of(first, picked)
        rows.append(scorer.row(f"best-of-{per}", f"w={w:g}", best, w=w))
    return rows


def tfpo_checks(rows: list[dict], label: str) -> dict:
    """The issue's targets for one TFPO front: concision at w = 0 (the concision doctor alone) against the
    patient + 3 SE; the best positivity point whose distinct-2 is within 0.05 of the patient's; the GenARM and
    DPO points that dominate every TFPO positivity point in (VADER, distinct-2)."""
    from fastdoctor import fronts

    patient = rows[0]
    w0 = next(r for r in rows if r["method"] == label and r.get("w") == 0)
    points = [r for r in rows if r["method"] == f"{label} (positivity)"]
    eligible = [r for r in points if r["distinct_2"] >= patient["distinct_2"] - 0.05]
    best = max(eligible, key=lambda r: r["positivity"]) if eligible else None
    rivals = [r for r in rows if r["method"] in ("GenARM (positivity)", "DPO (positivity)")]
    dominated_by = [f"{r['method']} {r['point']}" for r in rivals
                    if all(fronts.dominates((r["positivity"], r["distinct_2"]), (p["positivity"], p["distinct_2"]))
                           for p in points)]
    return {"concision_w0": w0["concision"], "concision_w0_se": w0["concision_se"],
            "patient_plus_3se": patient["concision"] + 3 * patient["concision_se"],
            "best_point": best and best["point"], "best_vader": best["positivity"] if best else float("nan"),
            "best_distinct_2": best and best["distinct_2"], "dominated_by": dominated_by}


def timing_run(sampler, tokenizer, prompts, vectors, doctors, front, seconds: float, samples: int, sampling) -> dict:
    """The same front again in one call per weight vector: wall time, and whether the tokens are the same."""
    from fastdoctor import quality

    _say("2-D TFPO again, one call per weight vector (timing)")
    t0 = time.time()
    alone = [quality.sample_completions(sampler, tokenizer, prompts, doctors=doctors, alpha=a, betas=b,
                                        samples=samples, **sampling) for a, b in vectors]
    timing = {"one_call_s": round(seconds, 1), "per_vector_calls_s": round(time.time() - t0, 1),
              "vectors": len(vectors), "rows": len(vectors) * len(prompts) * samples,
              "same_tokens": all(x.tokens == y.tokens for x, y in zip(front, alone)),
              "rows_with_same_tokens": sum(a == b for x, y in zip(front, alone)
                                           for pa, pb in zip(x.tokens, y.tokens) for a, b in zip(pa, pb))}
    timing["speedup"] = round(timing["per_vector_calls_s"] / max(timing["one_call_s"], 1e-9), 2)
    _say(f"timing: {timing}")
    return timing


def plot_2d(rows: list[dict], methods: list[str], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for method in methods:
        points = sorted((r for r in rows if r["method"] == method), key=lambda r: r.get("w", 0))
        axis.errorbar([r["positivity"] for r in points], [r["concision"] for r in points],
                      xerr=[r["positivity_se"] for r in points], yerr=[r["concision_se"] for r in points],
                      fmt="o-" if len(points) > 1 else "s", capsize=2, markersize=4, label=method, alpha=0.85)
    axis.set_xlabel("positivity (VADER, mean ± SE)")
    axis.set_ylabel("concision (mean ± SE)")
    axis.set_title("two-dimensional fronts, 11 weight vectors (held-out prompts)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_positivity(rows: list[dict], methods: list[str], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    for method in methods:
        points = [r for r in rows if r["method"] == method]
        for axis, key in zip(axes, ("distinct_2", "perplexity")):
            axis.errorbar([r[key] for r in points], [r["positivity"] for r in points],
                          yerr=[r["positivity_se"] for r in points], fmt="o-" if len(points) > 1 else "s",
                          capsize=2, markersize=4, label=method, alpha=0.85)
    axes[0].set_xlabel("distinct-2 (diversity)")
    axes[1].set_xlabel("the patient's perplexity of the outputs")
    for axis in axes:
        axis.set_ylabel("positivity (VADER, mean ± SE)")
        axis.legend(fontsize=7)
    figure.suptitle("positivity fronts (held-out prompts)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2, help="samples per prompt of every steered point")
    parser.add_argument("--patient-samples", type=int, default=8, help="the patient's samples (best-of-N up to it)")
    parser.add_argument("--strength", type=float, default=2.0, help="total guidance of the 2-D fronts: g = s * (w, 1 - w)")
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--grid", type=int, default=11, help="weight vectors of the 2-D fronts")
    parser.add_argument("--skip-timing", action="store_true", help="skip the one-call-per-vector timing run")
    parser.add_argument("--tfpo-conventions", nargs="+", default=["advantage", "normalised"],
                        choices=["advantage", "normalised"], help="the weight conventions TFPO is decoded under")
    add_options(parser, quick="throwaway models trained 1 step on 4 pairs in a temporary folder, 2 prompts, "
                              "4 new tokens, a 3-point grid", threads=2)
    args = parser.parse_args()
    start(args)
    if args.quick:
        args.steps, args.samples, args.patient_samples, args.max_new_tokens, args.grid = 1, 1, 4, 4, 3
    import torch
    import transformers

    from fastdoctor import dpo, fronts, judges, quality
    from fastdoctor.llmdoctor.data import bundled_preferences
    from fastdoctor.llmdoctor.doctor import load_doctor
    from fastdoctor.models import cache_dir, decode_dtype, load_model

    transformers.logging.disable_progress_bar()
    began = time.time()
    budget = Budget(steps=args.steps, batch_size=2 if args.quick else 8, pair_limit=4 if args.quick else None)
    scratch = tempfile.TemporaryDirectory() if args.quick else None
    root = pathlib.Path(scratch.name) if scratch else cache_dir() / "fronts" / budget.digest()
    patient, tokenizer = load_model("default", device=args.device)  # fp32: training and the perplexity judge
    dtype = decode_dtype(args.device)
    sampler = patient if dtype == torch.float32 else load_model("default", device=args.device, dtype=dtype)[0]
    folders = {d: train_models(patient, tokenizer, root, budget, d, args.quick) for d in ("positivity", "concision")}
    trained_s = time.time() - began
    prompts = [p.prompt for p in bundled_preferences("test")][: 2 if args.quick else None]
    sampling = dict(seed=0, max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=0.9)
    scorer = Scorer(patient)
    doctors = {kind: [load_doctor(folders[d][kind], tokenizer=tokenizer, patient=sampler).lm
                      for d in ("positivity", "concision")] for kind in ("tfpo", "genarm", "tfpo_rewards")}
    # (label, doctors, convention): TFPO under each convention asked for, GenARM, the rewards-flow ablation.
    steerers = [*((f"TFPO ({c})", "tfpo", c) for c in args.tfpo_conventions), ("GenARM", "genarm", "normalised"),
                ("TFPO, rewards flow", "tfpo_rewards", "normalised")]
    grid = fronts.weight_grid(args.grid)
    rows, timing = [], {}

    _say(f"patient: {len(prompts)} prompts x {args.patient_samples} samples")
    base = quality.sample_completions(sampler, tokenizer, prompts, samples=args.patient_samples, **sampling)
    paired = first_samples(base, args.samples)
    rows.append(scorer.row("patient", "-", paired, front="both"))
    flat = [t for per_prompt in base.texts for t in per_prompt]
    base_scores = {d: judges.judge(d)(flat) for d in ("positivity", "concision")}

    # --- two-dimensional fronts ---
    for label, kind, convention in steerers:
        vectors = [fronts.guidance_weights([args.strength * w, args.strength * (1 - w)], convention) for w, _ in grid]
        _say(f"2-D {label}: {len(vectors)} weight vectors in one call")
        t0 = time.time()
        front = quality.sample_weight_vectors(sampler, tokenizer, prompts, vectors, doctors=doctors[kind],
                                              samples=args.samples, **sampling)
        seconds = time.time() - t0
        if kind == "tfpo" and not timing and not args.skip_timing:
            timing = timing_run(sampler, tokenizer, prompts, vectors, doctors[kind], front, seconds, args.samples,
                                sampling)
        for (w, _), completions in zip(grid, front):
            rows.append(scorer.row(label, f"w={w:g}", completions, w=w, front="2d", strength=args.strength,
                                   convention=convention))
    _say("2-D Soups: one merged model per weight")
    for w, _ in grid:
        souped = dpo.soup(patient, folders["positivity"]["dpo"], folders["concision"]["dpo"], w).to(dtype)
        done = quality.sample_completions(souped, tokenizer, prompts, samples=args.samples, **sampling)
        rows.append(scorer.row("Soups (DPO)", f"w={w:g}", done, w=w, front="2d"))
        del souped
    for row in best_of_rows(scorer, base, base_scores, min(4, args.patient_samples), [w for w, _ in grid]):
        rows.append({**row, "front": "2d"})

    # --- one-dimensional positivity fronts ---
    for label, kind, convention in steerers:
        strengths = GENARM_STRENGTHS if kind == "genarm" else TFPO_STRENGTHS[convention]
        _say(f"positivity {label}: {len(strengths)} strengths in one call")
        vectors = [fronts.guidance_weights([g], convention) for g in strengths]
        front = quality.sample_weight_vectors(sampler, tokenizer, prompts, vectors, doctors=doctors[kind][:1],
                                              samples=args.samples, **sampling)
        for g, completions in zip(strengths, front):
            rows.append(scorer.row(f"{label} (positivity)", f"g={g:g}", completions, g=g, front="positivity",
                                   convention=convention))
    for dimension in ("positivity", "concision"):
        model = dpo.load_dpo(patient, folders[dimension]["dpo"]).to(dtype)
        done = quality.sample_completions(model, tokenizer, prompts, samples=args.samples, **sampling)
        rows.append(scorer.row(f"DPO ({dimension})", "-", done, front="both"))  # a point on both plots
        del model
    n = args.patient_samples
    for per in [b for b in BEST_OF if b <= n]:
        first = first_samples(base, per)
        picked = [base_scores["positivity"][i * n + j] for i in range(len(prompts)) for j in range(per)]
        best, _ = quality.best_of(first, picked)
        rows.append(scorer.row("best-of-N (VADER)", f"N={per}", best, N=per, front="positivity"))

    # --- hypervolume of the 2-D fronts ---
    two_d = [r for r in rows if r["front"] in ("2d", "both")]
    reference = (min(r["positivity"] for r in two_d), min(r["concision"] for r in two_d))
    methods_2d = [label for label, _, _ in steerers] + ["Soups (DPO)", "best-of-4" if n >= 4 else f"best-of-{n}"]
    volumes = {m: fronts.hypervolume([(r["positivity"], r["concision"]) for r in two_d if r["method"] == m], reference)
               for m in methods_2d}
    checks = {label: tfpo_checks(rows, label) for label, kind, _ in steerers if kind == "tfpo"}
    _say(f"hypervolume (reference {reference}): {volumes}; TFPO checks: {checks}")

    for row in rows:
        for key in ("positivity", "concision"):
            row[f"{key}_text"] = f"{row[key]:.3f} ± {row[f'{key}_se']:.3f}"
    meta = run_meta(args.device, prompts=len(prompts), samples_per_point=args.samples,
                    patient_samples=args.patient_samples, max_new_tokens=args.max_new_tokens, dtype=str(dtype),
                    strength_2d=args.strength, grid=grid, budget=dataclasses.asdict(budget),
                    hypervolume=volumes, hypervolume_reference=reference, timing=timing, tfpo_checks=checks,
                    patient_distinct_2=rows[0]["distinct_2"], training_s=round(trained_s, 1),
                    seconds=round(time.time() - began, 1), quick=args.quick,
                    conventions={"normalised": "log p = (log p_patient + sum g_i log p_i) / (1 + sum g_i)",
                                 "advantage": "log p = log p_patient + sum g_i (log p_i - log p_patient)"})
    columns = [("method", "method"), ("point", "weights"), ("convention", "convention"), ("positivity_text", "positivity (VADER)"),
               ("concision_text", "concision"), ("distinct_2", "distinct-2"), ("perplexity", "patient perplexity"),
               ("mean_tokens", "mean new tokens"), ("samples", "samples")]
    sections = ["Hypervolume of the 2-D fronts (reference point: the worst mean positivity and concision over "
                f"every 2-D point, ({reference[0]:.3f}, {reference[1]:.3f})):\n\n| front | hypervolume |\n|---|---|\n"
                + "\n".join(f"| {m} | {v:.4f} |" for m, v in volumes.items())]
    sections.append("TFPO against the targets (concision at w = 0 against the patient + 3 SE; positivity: the best "
                    "VADER with distinct-2 within 0.05 of the patient's, and the GenARM or DPO points that dominate "
                    "every TFPO point in (VADER, distinct-2)):\n\n"
                    "| TFPO | concision at w = 0 | patient + 3 SE | best VADER within 0.05 distinct-2 | dominated by |\n"
                    "|---|---|---|---|---|\n"
                    + "\n".join(f"| {label} | {c['concision_w0']:.3f} | {c['patient_plus_3se']:.3f} | "
                                f"{c['best_point'] or '-'}: {c['best_vader']:.3f} | {', '.join(c['dominated_by']) or 'none'} |"
                                for label, c in checks.items()))
    if timing:
        sections += ["", f"Per-row weights: the TFPO 2-D front ({timing['rows']} rows, {timing['vectors']} weight "
                         f"vectors) took {timing['one_call_s']} s in one call against {timing['per_vector_calls_s']} s "
                         f"in one call per vector ({timing['speedup']}x); identical tokens: {timing['same_tokens']} "
                         f"({timing['rows_with_same_tokens']} of {timing['rows']} rows)."]
    stem = result_stem(args.out, "fronts", args.device)
    _, md_path = write_results("fronts", args.device, meta, rows, columns, out=args.out, sections=sections,
                               title="fronts (--quick smoke run)" if args.quick else "preference fronts",
                               note=f"{len(prompts)} held-out prompts x {args.samples} samples per point (the patient: "
                                    f"{args.patient_samples}; best-of-N picks among its first N), top-p 0.9, T 1, "
                                    f"{args.max_new_tokens} new tokens, sampled in {dtype}; strengths g become weights "
                                    f"under each row's convention (normalised: by 1 + sum g; advantage: alpha = "
                                    f"1 - sum g, beta = g); 2-D strength {args.strength}. Training took "
                                    f"{trained_s:.0f} s.")
    plot_2d([r for r in rows if r["front"] in ("2d", "both")], ["patient", *methods_2d, "DPO (positivity)",
                                                                   "DPO (concision)"],
            stem.with_name(stem.name.replace("fronts_", "fronts_2d_")).with_suffix(".png"))
    plot_positivity([r for r in rows if r["front"] in ("positivity", "both")],
                    ["patient", *(f"{label} (positivity)" for label, _, _ in steerers), "DPO (positivity)",
                     "best-of-N (VADER)"],
                    stem.with_name(stem.name.replace("fronts_", "fronts_positivity_")).with_suffix(".png"))
    print(md_path.read_text())
    if scratch:
        scratch.cleanup()


if __name__ == "__main__":
    main()
