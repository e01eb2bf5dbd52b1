"""Builds a bundled doctor, datasets/doctors/<dimension> (`--doctor bundled:positivity`, `bundled:concision`).

It is the quickstart's TFPO doctor, trained by the project's own recipe with the quickstart's default settings
(seed 0) and the dimension's faces and pairs: stage 1 rewards from the default patient's faces on the bundled
train pairs (255 for positivity, 152 for concision), then the reference log-probs of every reply under the
patient, then 48 TFPO steps of 8 pairs (the reference flow, bf16 autocast where native) on a rank-8 LoRA copy of
the patient. The adapter weights are stored in bfloat16 (about 5 MB instead of 10); bundle.json records the
command, the settings, the decoding defaults (the advantage convention at strength 1: the doctor itself) and
the SHA-256 of every file.

    python -m fastdoctor.datasets.make_bundled_doctor [--dimension concision] [--cache DIR] [--out DIR]
        (reuses the quickstart's cache; from a checkout: --out python/fastdoctor/datasets/doctors/<dimension>)
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import pathlib
import shutil

import torch

DOCTORS = pathlib.Path(__file__).resolve().parent / "doctors"
COMMAND = "python -m fastdoctor.datasets.make_bundled_doctor --dimension {d} --out python/fastdoctor/datasets/doctors/{d}"
TRAINED_ON = {
    "positivity": "datasets/positivity_train.jsonl: 255 chosen/rejected pairs, the train split of the 300 everyday-"
                  "annoyance prompts, judged by VADER (see positivity.meta.json)",
    "concision": "datasets/concision_train.jsonl: 152 chosen/rejected pairs, the train split of the same 300 prompts, "
                 "judged by fastdoctor.judges.concision_score (see concision.meta.json)",
}


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    from safetensors.torch import load_file, save_file

    from .. import __version__
    from ..llmdoctor import quickstart
    from ..llmdoctor.data import bundled_preferences
    from ..llmdoctor.doctor import read_doctor_meta, save_doctor
    from ..llmdoctor.recipes import scored_examples
    from ..llmdoctor.rewards import FACES, RewardSettings, acquire_rewards
    from ..models import load_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=pathlib.Path, default=None, help="default: $FASTDOCTOR_CACHE")
    parser.add_argument("--dimension", default="positivity", choices=sorted(TRAINED_ON))
    parser.add_argument("--out", type=pathlib.Path, default=None, help="default: the installed package's folder")
    args = parser.parse_args()
    out = args.out or DOCTORS / args.dimension
    settings = quickstart.QuickstartSettings(faces=args.dimension).resolved()
    root = settings.doctor_root(args.cache)
    patient, tokenizer = load_model("default")
    rewards_path = quickstart.rewards_cache(settings, args.dimension, args.cache)
    if not rewards_path.exists():
        acquire_rewards(patient, tokenizer, bundled_preferences("train", args.dimension), rewards_path,
                        RewardSettings(faces=FACES[settings.faces]), patient_name="default")
    saved = root / "tfpo" / "doctor"
    if (saved / "doctor.json").exists() and read_doctor_meta(saved).get("kind") != "adapter":
        shutil.rmtree(saved)  # a merged doctor from an older cache: re-saved from the final checkpoint below
    examples = scored_examples(rewards_path, tokenizer, patient)
    doctor = quickstart._train_doctor(patient, tokenizer, examples, root, settings)
    info = read_doctor_meta(saved).get("info", {})
    save_doctor(doctor, out, tokenizer, info={**info, "quickstart": settings.training(), "bundled": args.dimension})
    decoding = {"convention": settings.convention, "strength": settings.strength}  # the quickstart's defaults
    weights = out / "adapter_model.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(weights)).items()}, str(weights),
              metadata={"format": "pt"})
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"  # not this machine's cache path
    config["target_modules"] = sorted(config["target_modules"])  # peft writes a set: its order varies by run
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "bundle.json")
    record = {"command": COMMAND.format(d=args.dimension), "recipe": "fastdoctor quickstart, default settings (stages 2 and 3)",
              "settings": dataclasses.asdict(settings), "seed": settings.seed, "decoding": decoding, "fastdoctor": __version__,
              "torch": torch.__version__, "patient": "SmolLM2-135M-Instruct (the embedded default patient)",
              "trained_on": TRAINED_ON[args.dimension],
              "adapter_dtype": "bfloat16", "sha256": {name: sha256(out / name) for name in files}}
    (out / "bundle.json").write_text(json.dumps(record, indent=2) + "\n")
    for path in out.iterdir():
        path.chmod(0o644)  # package data: readable by every user of the install
    print(f"wrote {out}: " + ", ".join(f"{n} {(out / n).stat().st_size / 1e6:.2f} MB" for n in files))


if __name__ == "__main__":
    main()
