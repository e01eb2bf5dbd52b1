"""Generates the bundled step-wise arithmetic reasoning set for TARo (fastdoctor.taro.reasoning), and probes the
default patient's accuracy on it.

  python -m fastdoctor.datasets.make_reasoning [--seed 0] [--probe 20] [--out DIR]

Files (JSONL, one record a line):
  reasoning_problems_test.jsonl   300 held-out problems, 60 per level (evaluation)
  reasoning_steps_test.jsonl      150 step pairs, one on each of the first 30 held-out problems per level
  reasoning_steps_train.jsonl     750 step pairs, two on each of 375 train problems (reward-model training)
  reasoning_problems_train.jsonl  500 other train problems with full solutions (router training)
Every set has the five levels (0-4) in equal numbers. No train question shares its skeleton (the question with
the person's name and pronouns blanked out) with a held-out question, and no question appears twice.
Each part is drawn from its own random.Random(f"{seed}/{part}/{level}"), so the files are a pure function of
the seed and fastdoctor.datasets.reasoning_generator.GENERATOR_VERSION (generation takes well under a second, and the tests
regenerate and compare).

--probe N greedy-decodes the default patient (SmolLM2-135M-Instruct, fp32, CPU) on the first N held-out
problems of each level (chat template around reasoning.format_prompt, --max-new-tokens tokens) and records
the accuracy per level in reasoning.meta.json. Without --probe, the recorded probe is kept when the
held-out file did not change.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import pathlib
import random
import time

from fastdoctor.datasets import reasoning_generator as generator
from fastdoctor.taro import reasoning

HERE = pathlib.Path(__file__).resolve().parent
TEST_PER_LEVEL = 60
TEST_STEP_PAIRS_PER_LEVEL = 30   # one step pair on each of the first 30 held-out problems of a level
STEP_PROBLEMS_PER_LEVEL = 75     # x 2 pairs = 150 step pairs per level
STEP_PAIRS_PER_PROBLEM = 2
ROUTER_PROBLEMS_PER_LEVEL = 100
FILES = ("problems_test", "steps_test", "steps_train", "problems_train")


def build(seed: int = 0) -> dict[str, list[dict]]:
    """The four parts as lists of JSON records (see the module docstring), a pure function of the seed."""
    seen_questions: set[str] = set()
    seen_skeletons: set[str] = set()
    parts: dict[str, list[dict]] = {name: [] for name in FILES}

    def draw(part: str, level: int, count: int, pairs: int, prefix: str, forbid_skeletons: set[str]):
        rng = random.Random(f"{seed}/{part}/{level}")
        made = 0
        while made < count:
            problem_id = f"{prefix}-L{level}-{made:03d}"
            problem, step_pairs = generator.generate_step_pairs(rng, level, max(pairs, 1), problem_id)
            skeleton = generator.question_skeleton(problem.question)
            if problem.question in seen_questions or skeleton in forbid_skeletons:
                continue
            seen_questions.add(problem.question)
            seen_skeletons.add(skeleton)
            made += 1
            yield problem, step_pairs[:pairs]

    for index, level in enumerate(reasoning.LEVELS):
        for problem, pairs in draw("test", level, TEST_PER_LEVEL, 1, "test", set()):
            parts["problems_test"].append(problem.to_json())
            if len(parts["problems_test"]) - index * TEST_PER_LEVEL <= TEST_STEP_PAIRS_PER_LEVEL:
                parts["steps_test"] += [pair.to_json() for pair in pairs]
    test_skeletons = set(seen_skeletons)
    for level in reasoning.LEVELS:
        for problem, pairs in draw("steps", level, STEP_PROBLEMS_PER_LEVEL, STEP_PAIRS_PER_PROBLEM, "steps",
                                   test_skeletons):
            parts["steps_train"] += [pair.to_json() for pair in pairs]
    for level in reasoning.LEVELS:
        for problem, _ in draw("router", level, ROUTER_PROBLEMS_PER_LEVEL, 0, "train", test_skeletons):
            parts["problems_train"].append(problem.to_json())
    return parts


def serialise(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def probe(problems: list[reasoning.Problem], per_level: int, max_new_tokens: int, batch_size: int) -> dict:
    """Greedy accuracy of the default patient on the first per_level problems of each level."""
    import torch
    import transformers

    import fastdoctor

    torch.set_num_threads(1)
    transformers.logging.disable_progress_bar()
    model, tokenizer = fastdoctor.load_model("default")
    tokenizer.padding_side = "left"
    chosen = [p for level in reasoning.LEVELS for p in [q for q in problems if q.level == level][:per_level]]
    texts = []
    started = time.time()
    for start in range(0, len(chosen), batch_size):
        chunk = chosen[start : start + batch_size]
        batch = tokenizer([reasoning.chat_prompt(tokenizer, p.question) for p in chunk], return_tensors="pt",
                          padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        texts += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        print(f"[reasoning] probe {len(texts)}/{len(chosen)} ({time.time() - started:.0f} s)", flush=True)
    result = {"patient": "SmolLM2-135M-Instruct (default, fp32, CPU)", "decoding": "greedy",
              "max_new_tokens": max_new_tokens, "problems_per_level": per_level,
              "problems": "the first problems of each level in reasoning_problems_test.jsonl",
              "instruction": reasoning.INSTRUCTION, "accuracy": {}, "accuracy_last_number_fallback": {},
              "answered": {}, "torch": torch.__version__, "transformers": transformers.__version__,
              "seconds": round(time.time() - started, 1)}
    for level in reasoning.LEVELS:
        rows = [(t, p) for t, p in zip(texts, chosen) if p.level == level]
        result["accuracy"][str(level)] = round(sum(reasoning.is_correct(t, p.answer) for t, p in rows) / len(rows), 3)
        result["accuracy_last_number_fallback"][str(level)] = round(
            sum(reasoning.is_correct(t, p.answer, last_number_fallback=True) for t, p in rows) / len(rows), 3)
        result["answered"][str(level)] = round(
            sum(reasoning.extract_answer(t) is not None for t, _ in rows) / len(rows), 3)
    result["examples"] = [{"id": p.id, "answer": p.answer, "response": t} for t, p in zip(texts, chosen)
                          if p.id.endswith("-000")]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe", type=int, default=0, metavar="N", help="probe the default patient on N "
                        "held-out problems per level (0: keep the recorded probe)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--out", type=pathlib.Path, default=HERE)
    args = parser.parse_args()

    parts = build(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name in FILES:
        body = serialise(parts[name])
        (args.out / f"reasoning_{name}.jsonl").write_text(body, encoding="utf-8")
        digests[name] = hashlib.sha256(body.encode()).hexdigest()
    meta_path = args.out / "reasoning.meta.json"
    old = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    count = lambda rows, key: dict(sorted(collections.Counter(str(r[key]) for r in rows).items()))  # noqa: E731
    meta = {"generator": "python -m fastdoctor.datasets.make_reasoning",
            "generator_version": generator.GENERATOR_VERSION, "seed": args.seed,
            "rng": "random.Random(f'{seed}/{part}/{level}') per part (test, steps, router) and level",
            "counts": {name: len(parts[name]) for name in FILES},
            "per_level": {name: count(parts[name], "level") for name in FILES},
            "error_types": {name: count(parts[name], "error_type") for name in ("steps_train", "steps_test")},
            "sha256": digests}
    if args.probe:
        problems = reasoning.load_problems(path=args.out / "reasoning_problems_test.jsonl")
        meta["probe"] = probe(problems, args.probe, args.max_new_tokens, args.batch_size)
    elif "probe" in old and old.get("sha256", {}).get("problems_test") == digests["problems_test"]:
        meta["probe"] = old["probe"]
    meta_path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({"counts": meta["counts"], "probe": meta.get("probe", {}).get("accuracy")}))


if __name__ == "__main__":
    main()
