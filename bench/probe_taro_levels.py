"""Where is the default patient in band? Greedy accuracy of SmolLM2-135M-Instruct on candidate problem forms, to
choose the reasoning set's in-band levels (fastdoctor.taro.reasoning, levels 5 and 6) by measurement.

Each candidate: --problems problems drawn from random.Random(f"{seed}/{name}"), answered greedily with the
reasoning instruction (reasoning.format_prompt), the answer checked by reasoning.is_correct. "one-shot" shows one
solved problem of the same form (from a pool of 8) as an earlier user/assistant chat exchange, as the in-band
levels do; "inline" writes the same example inside the one user turn instead.

    python bench/probe_taro_levels.py [--problems 100] [--threads 2] [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import random

import torch

import fastdoctor
from fastdoctor import tokens
from fastdoctor.datasets import reasoning_generator as generator
from fastdoctor.sequences import left_pad
from fastdoctor.taro import reasoning
from common import add_options, run_meta, start, write_results


def bare(first: tuple[int, int], second: tuple[int, int]):
    """'What is a + b?' / 'What is a - b?' (a - b >= 2, a != b) with a and b in the given ranges."""
    def draw(rng: random.Random) -> tuple[str, str, int]:
        while True:
            a, b, op = rng.randint(*first), rng.randint(*second), rng.choice("+-")
            value = a + b if op == "+" else a - b
            if value >= 2 and a != b:
                return f"What is {a} {op} {b}?", f"{a} {op} {b} = {value}.\nThe answer is {value}.", value
    return draw


def two_step(rng: random.Random) -> tuple[str, str, int]:
    while True:
        a, b, c = rng.randint(2, 29), rng.randint(2, 9), rng.randint(2, 9)
        op1, op2 = rng.choice("+-"), rng.choice("+-")
        middle = a + b if op1 == "+" else a - b
        value = middle + c if op2 == "+" else middle - c
        if middle > 0 and value > 0:
            return (f"What is {a} {op1} {b} {op2} {c}?", f"{a} {op1} {b} = {middle}.\n{middle} {op2} {c} = {value}.\n"
                    f"The answer is {value}.", value)


def comparison(rng: random.Random) -> tuple[str, str, int]:
    a, b = rng.sample(range(10, 100), 2)
    return f"Which is larger, {a} or {b}?", f"{max(a, b)} > {min(a, b)}.\nThe answer is {max(a, b)}.", max(a, b)


def word_level_1(rng: random.Random) -> tuple[str, str, int]:
    problem = generator.generate_problem(rng, 1)
    return problem.question, problem.solution, problem.answer


# name -> (draw, how the example is shown: "one-shot", "inline" or "none")
CANDIDATES = {
    "single digits (2-9 and 2-9)": (bare((2, 9), (2, 9)), "one-shot"),
    "level 0's sums (2-29 and 2-9): level 5": (bare((2, 29), (2, 9)), "one-shot"),
    "second number 10-29 (2-29 and 10-29): level 6": (bare((2, 29), (10, 29)), "one-shot"),
    "first number up to 44 (2-44 and 2-9)": (bare((2, 44), (2, 9)), "one-shot"),
    "first number up to 59 (2-59 and 2-9)": (bare((2, 59), (2, 9)), "one-shot"),
    "two-step sums": (two_step, "one-shot"),
    "comparisons (10-99)": (comparison, "one-shot"),
    "level 1's word problems": (word_level_1, "one-shot"),
    "level 0's sums, example inside the user turn": (bare((2, 29), (2, 9)), "inline"),
    "level 0's sums, no example": (bare((2, 29), (2, 9)), "none"),
}


def messages(question: str, example: tuple[str, str, int], shown: str) -> list[dict]:
    if shown == "one-shot":
        return [{"role": "user", "content": reasoning.format_prompt(example[0])},
                {"role": "assistant", "content": example[1]},
                {"role": "user", "content": reasoning.format_prompt(question)}]
    if shown == "inline":
        return [{"role": "user", "content": reasoning.format_prompt(f"Example: {example[0]}\n{example[1]}\n\n{question}")}]
    return [{"role": "user", "content": reasoning.format_prompt(question)}]


@torch.no_grad()
def accuracy(model, tokenizer, draw, shown: str, count: int, seed: str, new_tokens: int) -> float:
    rng = random.Random(seed)
    pool = [draw(rng) for _ in range(8)]
    items = [(draw(rng), rng.choice(pool)) for _ in range(count)]
    correct = 0
    for first in range(0, count, 50):
        chunk = items[first: first + 50]
        ids, mask = left_pad([tokens.encode(tokenizer, tokenizer.apply_chat_template(
            messages(q[0], example, shown), add_generation_prompt=True, tokenize=False)) for q, example in chunk],
            tokenizer.eos_token_id)
        out = fastdoctor.generate(model, ids, attention_mask=mask, temperature=0.0, max_new_tokens=new_tokens,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
        for row, ((_, _, answer), _) in zip(out[:, ids.shape[1]:].tolist(), chunk):
            row = row[: row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row
            correct += reasoning.is_correct(tokenizer.decode(row, skip_special_tokens=True), answer)
    return correct / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=100, help="problems per candidate")
    parser.add_argument("--seed", type=int, default=0)
    add_options(parser, quick="4 problems per candidate, 8 new tokens", threads=2)
    args = parser.parse_args()
    start(args)
    count, new_tokens = (4, 8) if args.quick else (args.problems, 64)
    model, tokenizer = fastdoctor.load_model("default", device=args.device)
    rows = []
    for name, (draw, shown) in CANDIDATES.items():
        value = accuracy(model, tokenizer, draw, shown, count, f"{args.seed}/{name}", new_tokens)
        se = (value * (1 - value) / count) ** 0.5
        rows.append({"candidate": name, "example": shown, "problems": count, "accuracy": value, "se": se,
                     "in_band": 0.3 <= value <= 0.7})
        print(f"{name}: {value:.2f} +- {se:.2f}", flush=True)
    columns = [("candidate", "candidate"), ("example", "worked example"), ("problems", "problems"),
               ("accuracy", "greedy accuracy"), ("se", "± s.e."), ("in_band", "30-70%")]
    write_results("taro_level_candidates", args.device, run_meta(args.device, problems=count, new_tokens=new_tokens,
                                                                 seed=args.seed, quick=args.quick), rows, columns,
                  out=args.out, note=f"Default patient (fp32), greedy, {new_tokens} new tokens, {count} problems per "
                                     "candidate; the answer checked by reasoning.is_correct.")


if __name__ == "__main__":
    main()
