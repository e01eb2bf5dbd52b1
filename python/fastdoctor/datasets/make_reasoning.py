"""Generates the bundled step-wise arithmetic reasoning set for TARo (fastdoctor.taro.reasoning), and probes the
default patient's accuracy on it.

  python -m fastdoctor.datasets.make_reasoning [--seed 0] [--probe 100] [--out DIR]

Files (JSONL, one record a line):
  reasoning_problems_test.jsonl   700 held-out problems: 60 per level 0-4, 200 per in-band level 5-6 (evaluation)
  reasoning_steps_test.jsonl      210 step pairs, one on each of the first 30 held-out problems per level
  reasoning_steps_train.jsonl     1050 step pairs, two on each of 75 train problems per level (reward-model training)
  reasoning_problems_train.jsonl  700 other train problems with full solutions, 100 per level (router training)
The in-band levels' problems (and their step pairs) carry a worked example, drawn from a pool of
EXAMPLES_PER_LEVEL per level that no problem repeats. No train question shares its skeleton (the question
with the person's name and pronouns blanked out) with a held-out question, and no question appears twice.
Each part is drawn from its own random.Random(f"{seed}/{part}/{level}"), so the files are a pure function of
the seed and fastdoctor.datasets.reasoning_generator.GENERATOR_VERSION (generation takes well under a second,
and the tests regenerate and compare). Levels 0-4 are drawn first, as version 2 drew them: their records are
byte-identical to version 2's.

--probe N greedy-decodes the default patient (SmolLM2-135M-Instruct, fp32, CPU, fastdoctor.generate, each
level's evaluation budget of new tokens) on the first N train problems of each level (the router split: the
patient does not train, and the held-out problems stay unseen) and records the accuracy per level in
reasoning.meta.json. Without --probe, the recorded probe is kept when that file did not change.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import pathlib
import random
import time

from fastdoctor.datasets import reasoning_generator as generator
from fastdoctor.taro import reasoning

HERE = pathlib.Path(__file__).resolve().parent
TEST_PER_LEVEL = 60
TEST_PER_IN_BAND_LEVEL = 200     # the in-band levels are where the methods can be told apart: 200 held-out each
TEST_STEP_PAIRS_PER_LEVEL = 30   # one step pair on each of the first 30 held-out problems of a level
STEP_PROBLEMS_PER_LEVEL = 75     # x 2 pairs = 150 step pairs per level
STEP_PAIRS_PER_PROBLEM = 2
ROUTER_PROBLEMS_PER_LEVEL = 100
EXAMPLES_PER_LEVEL = 8           # the worked examples an in-band problem draws its one shot from
FILES = ("problems_test", "steps_test", "steps_train", "problems_train")
OLDER_LEVELS = tuple(level for level in reasoning.LEVELS if level not in reasoning.IN_BAND_LEVELS)


def build(seed: int = 0) -> dict[str, list[dict]]:
    """The four parts as lists of JSON records (see the module docstring), a pure function of the seed.

    The older levels are drawn first, exactly as generator version 2 drew them (no question twice in the whole
    split, no held-out skeleton among the train problems), so their records stay byte-identical. The in-band
    levels follow: no question twice within a level, no worked example as a problem, no held-out question or
    skeleton (of any level) among the train problems, and none of the train ones among the held-out. An
    in-band problem may repeat an older level's question on the same side of the split, since its prompt
    differs by the worked example: level 5 has level 0's ~400 questions to draw from."""
    seen_questions: set[str] = set()
    seen_skeletons: set[str] = set()
    parts: dict[str, list[dict]] = {name: [] for name in FILES}

    def draw(part: str, level: int, count: int, pairs: int, prefix: str, forbid_skeletons: set[str],
             examples=(), forbid_questions: set[str] | None = None):
        rng = random.Random(f"{seed}/{part}/{level}")
        level_questions: set[str] = set()
        made = 0
        while made < count:
            problem_id = f"{prefix}-L{level}-{made:03d}"
            problem, step_pairs = generator.generate_step_pairs(rng, level, max(pairs, 1), problem_id)
            skeleton = generator.question_skeleton(problem.question)
            taken = (problem.question in seen_questions if forbid_questions is None
                     else problem.question in forbid_questions or problem.question in level_questions)
            if taken or skeleton in forbid_skeletons:
                continue
            seen_questions.add(problem.question)
            level_questions.add(problem.question)
            seen_skeletons.add(skeleton)
            made += 1
            if examples:  # the in-band levels only: the older levels' draws use rng exactly as before
                example = rng.choice(examples)
                problem = dataclasses.replace(problem, example=example)
                step_pairs = [dataclasses.replace(pair, example=example) for pair in step_pairs]
            yield problem, step_pairs[:pairs]

    def example_pool(level: int) -> list[reasoning.WorkedExample]:
        rng, pool = random.Random(f"{seed}/examples/{level}"), []
        while len(pool) < EXAMPLES_PER_LEVEL:
            problem = generator.generate_problem(rng, level)
            if problem.question not in seen_questions:
                seen_questions.add(problem.question)
                pool.append(reasoning.WorkedExample(problem.question, problem.solution))
        return pool

    def held_out(levels, per_level: int, forbid: set[str], pools: dict, questions: set[str] | None) -> None:
        for level in levels:
            for index, (problem, pairs) in enumerate(draw("test", level, per_level, 1, "test", forbid,
                                                          pools.get(level, ()), questions)):
                parts["problems_test"].append(problem.to_json())
                if index < TEST_STEP_PAIRS_PER_LEVEL:
                    parts["steps_test"] += [pair.to_json() for pair in pairs]

    def train(levels, forbid: set[str], pools: dict, questions: set[str] | None) -> None:
        for level in levels:
            for _, pairs in draw("steps", level, STEP_PROBLEMS_PER_LEVEL, STEP_PAIRS_PER_PROBLEM, "steps", forbid,
                                 pools.get(level, ()), questions):
                parts["steps_train"] += [pair.to_json() for pair in pairs]
        for level in levels:
            for problem, _ in draw("router", level, ROUTER_PROBLEMS_PER_LEVEL, 0, "train", forbid,
                                   pools.get(level, ()), questions):
                parts["problems_train"].append(problem.to_json())

    def questions_of(*names: str) -> set[str]:
        return {record.get("question") or record["prompt"] for name in names for record in parts[name]}

    held_out(OLDER_LEVELS, TEST_PER_LEVEL, set(), {}, None)
    test_skeletons = set(seen_skeletons)
    train(OLDER_LEVELS, test_skeletons, {}, None)
    pools = {level: example_pool(level) for level in reasoning.IN_BAND_LEVELS}
    examples = {example.question for pool in pools.values() for example in pool}
    train_questions = questions_of("steps_train", "problems_train")
    train_skeletons = {generator.question_skeleton(q) for q in train_questions}
    held_out(reasoning.IN_BAND_LEVELS, TEST_PER_IN_BAND_LEVEL, train_skeletons, pools, train_questions | examples)
    test_questions = questions_of("problems_test")
    train(reasoning.IN_BAND_LEVELS, {generator.question_skeleton(q) for q in test_questions}, pools,
          test_questions | examples)
    return parts


def serialise(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def probe(problems: list[reasoning.Problem], per_level: int, batch_size: int, threads: int) -> dict:
    """Greedy accuracy of the default patient on the first per_level problems of each level (fastdoctor.generate,
    fp32, each level's evaluation budget of new tokens)."""
    import torch
    import transformers

    import fastdoctor
    from fastdoctor import tokens
    from fastdoctor.sequences import left_pad
    from fastdoctor.taro.evaluate import MAX_NEW_TOKENS

    torch.set_num_threads(threads)
    transformers.logging.disable_progress_bar()
    model, tokenizer = fastdoctor.load_model("default")
    chosen = [p for level in reasoning.LEVELS for p in [q for q in problems if q.level == level][:per_level]]
    texts = []
    started = time.time()
    for level in reasoning.LEVELS:
        group = [p for p in chosen if p.level == level]
        for start in range(0, len(group), batch_size):
            chunk = group[start: start + batch_size]
            ids, mask = left_pad([tokens.encode(tokenizer, reasoning.chat_prompt(tokenizer, p.question, p.example))
                                  for p in chunk], tokenizer.eos_token_id)
            out = fastdoctor.generate(model, ids, attention_mask=mask, temperature=0.0,
                                      max_new_tokens=MAX_NEW_TOKENS[level], eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.eos_token_id)
            for row in out[:, ids.shape[1]:].tolist():
                row = row[: row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row
                texts.append(tokenizer.decode(row, skip_special_tokens=True))
            print(f"[reasoning] probe {len(texts)}/{len(chosen)} ({time.time() - started:.0f} s)", flush=True)
    result = {"patient": "SmolLM2-135M-Instruct (default, fp32, CPU)", "decoding": "greedy",
              "max_new_tokens": {str(level): MAX_NEW_TOKENS[level] for level in reasoning.LEVELS},
              "problems_per_level": per_level,
              "problems": "the first problems of each level in reasoning_problems_train.jsonl (100 per level; the "
                          "patient never trains, and the held-out problems stay unseen)",
              "instruction": reasoning.INSTRUCTION, "in_band_levels": list(reasoning.IN_BAND_LEVELS),
              "accuracy": {}, "accuracy_se": {}, "accuracy_last_number_fallback": {}, "answered": {},
              "torch": torch.__version__, "transformers": transformers.__version__,
              "seconds": round(time.time() - started, 1)}
    for level in reasoning.LEVELS:
        rows = [(t, p) for t, p in zip(texts, chosen) if p.level == level]
        accuracy = sum(reasoning.is_correct(t, p.answer) for t, p in rows) / len(rows)
        result["accuracy"][str(level)] = round(accuracy, 3)
        result["accuracy_se"][str(level)] = round((accuracy * (1 - accuracy) / len(rows)) ** 0.5, 3)
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
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
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
        problems = reasoning.load_problems(path=args.out / "reasoning_problems_train.jsonl")
        meta["probe"] = probe(problems, args.probe, args.batch_size, args.threads)
    elif "probe" in old and old.get("sha256", {}).get("problems_train") == digests["problems_train"]:
        meta["probe"] = old["probe"]
    meta_path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({"counts": meta["counts"], "probe": meta.get("probe", {}).get("accuracy")}))


if __name__ == "__main__":
    main()
