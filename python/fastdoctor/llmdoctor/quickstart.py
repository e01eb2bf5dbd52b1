"""`fastdoctor quickstart`: LLMdoctor end to end on the embedded default patient, offline.

  0. show steering at once: one held-out prompt answered by the patient alone and steered by the bundled,
     already-trained positivity doctor (datasets/doctors/positivity), before anything is trained;
  1. load the bundled positivity preference pairs;
  2. acquire token-level rewards from the patient's positive and negative faces (stage 1);
  3. train a doctor with TFPO (stage 2): by default a LoRA copy of the patient (same-size setting), or a
     small distilled doctor (--doctor small);
  4. sample completions for the held-out prompts with and without the doctor (stage 3), in bfloat16 where the
     CPU or GPU has native bf16 (models.decode_dtype; training and the perplexity judge stay float32);
  5. print a side-by-side table (VADER reward, win rate, distinct-2/3, tokens/s) and example completions.

Every artefact is cached under $FASTDOCTOR_CACHE/quickstart/: stage 1's rewards under rewards/ (keyed by the
data and faces), the trained doctor under doctors/<training digest>/ (keyed by the settings that shape
training, so another strength reuses it), the results under <settings digest>/; each stage resumes from what
an interrupted run left, so a second run prints its table in seconds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import sys
import time

import torch

from .. import __version__ as VERSION
from ..models import cache_dir


@dataclasses.dataclass(frozen=True)
class QuickstartSettings:
    doctor: str = "full"  # "full" (LoRA copy of the patient) or "small" (distilled)
    steps: int = 48
    batch_size: int = 8
    lr: float = 5e-4
    flow: str = "reference"  # TFPO's prefix score (tfpo.TFPOSettings.flow, METHODS.md decision 1)
    value_ramp: bool | None = None  # the fitted position ramp in log V (None: the flow's default, recipes)
    autocast: str = "auto"  # of TFPO training: "auto" is bf16 where the CPU/GPU has native bf16, else "none"
    distill_steps: int = 60
    # The doctor's guidance strength g under `convention` (fastdoctor.fronts): "advantage" decodes
    # log p + g (log p_doctor - log p_patient) (alpha = 1 - g, beta = g), "normalised" alpha = 1 / (1 + g),
    # beta = g / (1 + g). The reference-flow doctor is the patient tilted by its rewards, so g = 1 samples what
    # TFPO trained (the advantage convention won both dimensions: bench/results/fronts_cpu.md).
    strength: float = 1.0
    convention: str = "advantage"
    samples: int = 2
    max_new_tokens: int = 48
    top_p: float = 0.9
    temperature: float = 1.0
    seed: int = 0
    faces: str = "positivity"
    dtype: str = "auto"  # of the sampling stage: "auto" (models.decode_dtype), "float32" or "bfloat16"

    @property
    def alpha(self) -> float:
        from ..fronts import guidance_weights

        return guidance_weights([self.strength], self.convention)[0]

    @property
    def beta(self) -> float:
        from ..fronts import guidance_weights

        return guidance_weights([self.strength], self.convention)[1][0]

    def resolved(self) -> "QuickstartSettings":
        """These settings with dtype and autocast "auto" replaced by what they mean on this machine (the cache
        key must say which dtype the doctor was trained and the results sampled in)."""
        from ..models import native_bf16

        native = native_bf16("cpu")
        dtype = ("bfloat16" if native else "float32") if self.dtype == "auto" else self.dtype
        autocast = ("bf16" if native else "none") if self.autocast == "auto" else self.autocast
        return dataclasses.replace(self, dtype=dtype, autocast=autocast)

    TRAINING = ("doctor", "steps", "batch_size", "lr", "flow", "value_ramp", "autocast", "distill_steps", "seed",
                "faces")

    def training(self) -> dict:
        """The settings that shape the trained doctor (not how it is decoded or scored)."""
        return {name: getattr(self, name) for name in self.TRAINING}

    def doctor_root(self, cache: pathlib.Path | None = None) -> pathlib.Path:
        """Where the doctor these settings train is cached (trained on the `faces` dimension's pairs)."""
        blob = json.dumps({"training": self.training(), "version": VERSION}, sort_keys=True)
        key = hashlib.sha256(blob.encode()).hexdigest()[:12]
        return (cache or cache_dir()) / "quickstart" / "doctors" / f"{self.faces}-{key}"

    def digest(self) -> str:
        blob = json.dumps({"settings": dataclasses.asdict(self), "version": VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def rewards_cache(s: QuickstartSettings, data: str = "positivity", cache: pathlib.Path | None = None) -> pathlib.Path:
    """Where stage 1's rewards of the bundled `data` pairs under `s`'s faces live: they depend on those two
    (and this version) only, so runs that differ in training or decoding settings share them."""
    key = hashlib.sha256(json.dumps({"faces": s.faces, "data": data, "version": VERSION}).encode()).hexdigest()[:12]
    return (cache or cache_dir()) / "quickstart" / "rewards" / f"{data}-{s.faces}-{key}.safetensors"


def _say(message: str) -> None:
    print(f"[quickstart] {message}", file=sys.stderr, flush=True)


def _train_doctor(patient, tokenizer, examples, root: pathlib.Path, s: QuickstartSettings):
    """The TFPO doctor of `s`, trained under `root` (QuickstartSettings.doctor_root) unless cached there."""
    from . import distill
    from .data import bundled_preferences
    from .doctor import load_doctor
    from ..train import TrainConfig
    from .recipes import DoctorInit, build_lm, distill_small, train_tfpo
    from .tfpo import TFPOSettings

    saved = root / "tfpo" / "doctor"
    if (saved / "doctor.json").exists():
        _say(f"3/5 doctor: cached at {saved}")
        return load_doctor(saved, tokenizer=tokenizer, patient=patient)
    init = DoctorInit(kind=s.doctor, value_ramp=s.value_ramp)
    if s.doctor == "small":
        _say(f"3/5 doctor: distilling {init.num_layers} of the patient's layers (KL to the patient on its own text)")
        sequences = distill.chat_sequences(tokenizer, bundled_preferences("train"))
        lm = distill_small(patient, tokenizer, sequences, root / "distill",
                           init, TrainConfig(steps=s.distill_steps, batch_size=8, lr=3e-4, warmup_steps=5, log_every=10))
        lr = s.lr / 5  # all weights train here, not a LoRA adapter
    else:
        lm = build_lm(patient, init, seed=s.seed)
        lr = s.lr
    _say(f"3/5 doctor: TFPO, {s.steps} steps of {s.batch_size} pairs ({s.doctor} doctor)")
    config = TrainConfig(steps=s.steps, batch_size=s.batch_size, lr=lr, warmup_steps=max(s.steps // 10, 1),
                         log_every=4, checkpoint_every=8, seed=s.seed, autocast=s.autocast)
    train_tfpo(lm, tokenizer, examples, root / "tfpo", config, TFPOSettings(flow=s.flow), value_ramp=init.value_ramp,
               info={"quickstart": s.training()})
    return load_doctor(saved, tokenizer=tokenizer, patient=patient)


def _show_bundled_doctor(patient, tokenizer, prompt: str, s: QuickstartSettings) -> dict:
    """One reply from the patient alone and one steered by the bundled positivity doctor (seconds): what the
    run below rebuilds from scratch."""
    from ..doctors import bundled_doctor
    from .. import quality
    from .doctor import load_doctor

    doctor = load_doctor(bundled_doctor("positivity"), patient=patient, tokenizer=tokenizer)  # already in its dtype
    sampling = dict(samples=1, seed=s.seed, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                    top_p=s.top_p)
    alone = quality.sample_completions(patient, tokenizer, [prompt], **sampling)
    steered = quality.sample_completions(patient, tokenizer, [prompt], doctors=[doctor.lm], alpha=s.alpha,
                                          betas=[s.beta], **sampling)
    example = {"prompt": prompt, "patient": alone.texts[0][0], "doctor": steered.texts[0][0]}
    _say(f"0/5 the bundled positivity doctor (strength {s.strength:g}), before training our own:\n"
         f"  prompt:  {example['prompt']}\n  patient: {example['patient']}\n  doctor:  {example['doctor']}")
    return example


def run(settings: QuickstartSettings = QuickstartSettings(), *, cache: pathlib.Path | None = None,
        threads: int | None = None) -> dict:
    from ..files import write_json
    from ..models import load_model
    from .. import quality
    from .data import bundled_preferences
    from .doctor import load_doctor
    from .recipes import scored_examples
    from .rewards import FACES, RewardSettings, acquire_rewards

    started = time.time()
    if threads:
        torch.set_num_threads(threads)
    settings = settings.resolved()
    root = (cache or cache_dir()) / "quickstart" / settings.digest()
    results_path = root / "results.json"
    if results_path.exists():
        _say(f"cached results from {root} (delete that folder to recompute)")
        results = json.loads(results_path.read_text())
        print(format_report(results))
        return results
    import transformers

    transformers.logging.disable_progress_bar()
    train_pairs, test_pairs = bundled_preferences("train"), bundled_preferences("test")
    patient, tokenizer = load_model("default")  # float32: rewards, training and the perplexity judge
    sampler = patient if settings.dtype == "float32" else load_model("default", dtype=getattr(torch, settings.dtype))[0]
    bundled_example = _show_bundled_doctor(sampler, tokenizer, test_pairs[0].prompt, settings)
    _say("1/5 data: the bundled positivity preference set")
    rewards_path = rewards_cache(settings, "positivity", cache)
    if rewards_path.exists():
        _say(f"2/5 rewards: cached at {rewards_path}")
    else:
        _say(f"2/5 rewards: scoring {len(train_pairs)} pairs under the '{settings.faces}' faces")
        acquire_rewards(patient, tokenizer, train_pairs, rewards_path,
                        RewardSettings(faces=FACES[settings.faces]), patient_name="default")
    examples = scored_examples(rewards_path, tokenizer, patient)
    doctor_root = settings.doctor_root(cache)
    doctor = _train_doctor(patient, tokenizer, examples, doctor_root, settings)
    prompts = [p.prompt for p in test_pairs]
    sampling = dict(samples=settings.samples, seed=settings.seed, max_new_tokens=settings.max_new_tokens,
                    temperature=settings.temperature, top_p=settings.top_p)
    # The doctor over the sampling patient (an adapter re-attaches to its weights, a separate model converts).
    sampler_doctor = doctor.lm if sampler is patient else load_doctor(
        doctor_root / "tfpo" / "doctor", dtype=getattr(torch, settings.dtype), tokenizer=tokenizer, patient=sampler).lm
    _say(f"4/5 generate ({settings.dtype}): {len(prompts)} held-out prompts x {settings.samples} samples, patient alone")
    alone = quality.sample_completions(sampler, tokenizer, prompts, **sampling)
    _say(f"4/5 generate: the same with the doctor (strength {settings.strength:g}: alpha {settings.alpha:.3g}, "
         f"beta {settings.beta:.3g})")
    steered = quality.sample_completions(sampler, tokenizer, prompts, doctors=[sampler_doctor], alpha=settings.alpha,
                                          betas=[settings.beta], **sampling)
    _say("5/5 score: VADER, distinct-n, the patient's perplexity")
    base_row = quality.summarise("patient alone", alone, patient)
    doctor_row = quality.summarise(f"patient + TFPO doctor (strength {settings.strength:g})", steered, patient,
                                    baseline_scores=base_row["scores"])
    results = {"settings": dataclasses.asdict(settings), "rows": [base_row, doctor_row],
               "examples": [{"prompt": prompts[i], "patient": alone.texts[i][0], "doctor": steered.texts[i][0]}
                            for i in range(2)], "bundled_example": bundled_example,
               "seconds": round(time.time() - started, 1), "torch": torch.__version__, "fastdoctor": VERSION}
    write_json(results_path, results)
    print(format_report(results))
    return results


def format_report(results: dict) -> str:
    lines = ["", "| method | VADER reward (mean ± SE) | win rate vs patient | distinct-2 | distinct-3 | "
                 "patient perplexity | tokens/s |", "|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        win = f"{row['win_rate']:.2f}" if "win_rate" in row else "-"
        lines.append(f"| {row['method']} | {row['reward']:.3f} ± {row['reward_se']:.3f} | {win} | "
                     f"{row['distinct_2']:.3f} | {row['distinct_3']:.3f} | {row['perplexity']:.1f} | "
                     f"{row['tokens_per_s']:.1f} |")
    for example in results["examples"]:
        lines += ["", f"prompt:  {example['prompt']}", f"patient: {example['patient']}",
                  f"doctor:  {example['doctor']}"]
    if "bundled_example" in results:
        example = results["bundled_example"]
        lines += ["", "the bundled positivity doctor on the first prompt (same seed):",
                  f"doctor:  {example['doctor']}"]
    lines.append(f"\n(first run took {results['seconds']} s; settings {json.dumps(results['settings'])})")
    return "\n".join(lines)
