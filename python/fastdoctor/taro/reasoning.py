"""Step-wise arithmetic reasoning data for TARo: records, Math-Step-DPO-style pairs, a verifier, loaders.

Problems are short multi-step word problems (shopping, savings, travel, baking, an orchard, reading, a
classroom) in four difficulty levels, with a level 0 of bare sums and differences below them; every
solution step is one sentence with one explicit equation ("3 trays of 12 cookies make 3 * 12 = 36
cookies."), and the solution ends with "The answer is N.".

    level 0  bare arithmetic, "What is 17 + 5?", one step   (the default patient gets one in five or fewer)
    level 1  one step, single-digit numbers, + or -        (the default patient gets some right)
    level 2  two steps, small numbers (results up to 40), + - and * by 2 or 3
    level 3  three or four steps, two-digit numbers, + - * / and "change" subtractions
    level 4  five or six steps, two- and three-digit numbers, carries and borrows forced where possible

and two in-band levels (IN_BAND_LEVELS), where the default patient is right often enough, and wrong often
enough, for steering to show either way. Their problems carry a worked example of the same level, shown as
an earlier user/assistant exchange of the chat (one-shot). Written inside the single user turn instead, the
example helped little (level 0's sums: 0.12 against 0.46 as a chat turn; bench/probe_taro_levels.py):

    level 5  level 0's bare sums and differences, with a worked example
    level 6  bare sums and differences of a number up to 29 and one from 10 to 29, with a worked example

(Level 1's word problems with a worked example measured 0.23-0.33 across draws of 100, at the band's edge; the
bare forms sat inside it in every draw.)

Step pairs follow Math-Step-DPO-10K's fields (METHODS.md §3.2): `prompt` (the question),
`initial_reason_steps` (a correct prefix of k steps, newline-joined, possibly empty), `chosen` (the correct
step k), `rejected` (a plausible wrong step k), `full_chosen` / `full_rejected` (that step and the rest of
the solution; the rejected continuation carries the wrong value through to a wrong final answer). The error
types are ERROR_TYPES:

    arithmetic_slip   the result is off by a small amount (1, 2 or 10)      -> the equation is false
    digit_swap        two adjacent digits of the result are swapped          -> the equation is false
    dropped_carry     a carry (or borrow) is dropped, digit by digit         -> the equation is false
    wrong_operand     another number from the problem replaces an operand    -> true equation, wrong value
    wrong_operation   another operation replaces the right one               -> true equation, wrong value

so `check_step` (which checks the arithmetic of every "a op b = c" in a step) rejects the first three kinds;
the last two are reasoning errors whose arithmetic is right but whose value is wrong.

The bundled, frozen split lives in fastdoctor/datasets/reasoning_*.jsonl, made by
fastdoctor/datasets/reasoning_generator.py (see make_reasoning.py for how, and reasoning.meta.json for the
seed, the counts and the default patient's accuracy).
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
from fractions import Fraction

from ..files import read_jsonl_objects

LEVELS = (0, 1, 2, 3, 4, 5, 6)
IN_BAND_LEVELS = (5, 6)  # one-shot levels where the default patient is neither at the floor nor the ceiling
ERROR_TYPES = ("arithmetic_slip", "digit_swap", "dropped_carry", "wrong_operand", "wrong_operation")
ARITHMETIC_ERROR_TYPES = ("arithmetic_slip", "digit_swap", "dropped_carry")
INSTRUCTION = "Solve the problem step by step. End with 'The answer is N.'"
DATASETS = pathlib.Path(__file__).resolve().parent.parent / "datasets"

# ------------------------------------------------------------------------------------------------ prompt


def format_prompt(question: str) -> str:
    """The user-turn text for a question (the chat template goes around it). Training and evaluation both
    use this one function, so the patient, the reward model and the router all see the same instruction."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question: expected a non-empty string")
    return f"{INSTRUCTION}\n\n{question.strip()}"


def chat_prompt(tokenizer, question: str, example: "WorkedExample | None" = None) -> str:
    """format_prompt(question) as a user turn in the tokenizer's chat template, with the assistant turn
    opened (add_generation_prompt=True); with a worked example, that example's question and solution come
    first as an earlier user/assistant exchange. Returns text, to be tokenised by the caller."""
    messages = [{"role": "user", "content": format_prompt(question)}]
    if example is not None:
        messages[:0] = [{"role": "user", "content": format_prompt(example.question)},
                        {"role": "assistant", "content": example.solution}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def final_answer_line(answer: int) -> str:
    """The last line of every solution: 'The answer is N.'"""
    return f"The answer is {int(answer)}."


# ------------------------------------------------------------------------------------------------ records


@dataclasses.dataclass(frozen=True)
class WorkedExample:
    """A solved problem shown before the question as an earlier chat exchange (the in-band levels)."""
    question: str
    solution: str

    def to_json(self) -> dict:
        return {"question": self.question, "solution": self.solution}


@dataclasses.dataclass(frozen=True)
class Problem:
    """One word problem with its step-by-step solution (steps hold the equation steps only; `solution`
    adds the final 'The answer is N.' line)."""
    id: str
    question: str
    steps: tuple[str, ...]
    answer: int
    level: int
    topic: str = ""
    example: WorkedExample | None = None

    @property
    def solution(self) -> str:
        return "\n".join((*self.steps, final_answer_line(self.answer)))

    def to_json(self) -> dict:
        record = {"id": self.id, "level": self.level, "topic": self.topic, "question": self.question,
                  "steps": list(self.steps), "answer": self.answer}
        return record | ({"example": self.example.to_json()} if self.example else {})  # older levels: no key


@dataclasses.dataclass(frozen=True)
class StepPair:
    """A Math-Step-DPO-style pair: given prompt + initial_reason_steps, `chosen` is the right next step and
    `rejected` a plausible wrong one (error_type says how it is wrong)."""
    prompt: str
    initial_reason_steps: str
    chosen: str
    rejected: str
    full_chosen: str
    full_rejected: str
    answer: int
    level: int
    error_type: str
    problem_id: str = ""
    step_index: int = 0
    example: WorkedExample | None = None

    def to_json(self) -> dict:
        record = dataclasses.asdict(self)
        if self.example is None:
            del record["example"]  # the older levels' records stay byte-identical
        return record


# ------------------------------------------------------------------------------------------------ verifier

_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_ANSWER_RE = re.compile(
    r"answer\s*(?:is|:|=)\s*[:=]?[\s*_$\\{(]*(?:boxed\{)?\s*(-?(?:" + _NUM + r"))(?![\d,]*\d)", re.IGNORECASE)
_BOXED_RE = re.compile(r"\\boxed\{\s*(-?(?:" + _NUM + r"))\s*\}")
_ANY_NUMBER_RE = re.compile(r"-?(?:" + _NUM + r")")
_OP = r"[-+*/×÷xX]"
_EQUATION_RE = re.compile(r"(?<![\w.,])((?:" + _NUM + r")(?:\s*" + _OP + r"\s*(?:" + _NUM + r"))+)\s*=\s*(-?(?:"
                          + _NUM + r"))(?![\d])")
_TOKEN_RE = re.compile(_NUM + "|" + _OP)


def _to_int(number: str) -> int | None:
    value = Fraction(number.replace(",", ""))
    return int(value) if value.denominator == 1 else None


def extract_answer(text: str, *, last_number_fallback: bool = False) -> int | None:
    """The integer after the last 'The answer is' / 'answer:' / 'answer =' (or in a \\boxed{}), with commas
    ('1,234'), a '$', markdown bold or a trailing period tolerated; None when there is no such phrase, or
    the number is not an integer (5.5). Only with last_number_fallback=True does the last number anywhere in
    the text count when no answer phrase is found."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected a string, got {type(text).__name__}")
    matches = [(m.start(), m.group(1)) for m in _ANSWER_RE.finditer(text)]
    matches += [(m.start(), m.group(1)) for m in _BOXED_RE.finditer(text)]
    if matches:
        return _to_int(max(matches)[1])
    if last_number_fallback:
        numbers = _ANY_NUMBER_RE.findall(text)
        if numbers:
            return _to_int(numbers[-1])
    return None


def is_correct(text: str, answer: int, *, last_number_fallback: bool = False) -> bool:
    """Whether extract_answer(text) equals the integer answer."""
    found = extract_answer(text, last_number_fallback=last_number_fallback)
    return found is not None and found == int(answer)


def _evaluate(expression: str) -> Fraction | None:
    """Exact value of 'a op b op c ...' with * and / before + and -; None on division by zero."""
    tokens = _TOKEN_RE.findall(expression)
    terms: list[Fraction] = []
    signs: list[int] = []
    current = Fraction(tokens[0].replace(",", ""))
    sign = 1
    for op, number in zip(tokens[1::2], tokens[2::2]):
        value = Fraction(number.replace(",", ""))
        if op in "*×xX":
            current *= value
        elif op in "/÷":
            if value == 0:
                return None
            current /= value
        else:
            terms.append(current)
            signs.append(sign)
            sign = 1 if op == "+" else -1
            current = value
    terms.append(current)
    signs.append(sign)
    return sum((s * t for s, t in zip(signs, terms)), Fraction(0))


def find_equations(text: str) -> list[tuple[str, str]]:
    """Every 'a op b [op c ...] = d' in the text, as (left side, right side) strings."""
    return [(m.group(1), m.group(2)) for m in _EQUATION_RE.finditer(text)]


def check_step(step_text: str, *, require_equation: bool = False) -> bool:
    """True when every equation 'a op b = c' in the step (ops + - * / x × ÷, * and / first, commas in
    numbers allowed) is arithmetically exact. A step with no equation passes unless require_equation."""
    equations = find_equations(step_text)
    if not equations:
        return not require_equation
    for left, right in equations:
        value = _evaluate(left)
        if value is None or value != Fraction(right.replace(",", "")):
            return False
    return True


# ------------------------------------------------------------------------------------------------ loaders


def _field(path, number, record, name, kind, *, empty_ok=False):
    value = record.get(name)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{path}:{number}: field '{name}' is missing or not an integer")
    elif kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{path}:{number}: field '{name}' is missing or not a string")
        if not empty_ok and not value.strip():
            raise ValueError(f"{path}:{number}: field '{name}' is empty")
    return value


def _example_field(path, number, record) -> WorkedExample | None:
    example = record.get("example")
    if example is None:
        return None
    if not isinstance(example, dict):
        raise ValueError(f"{path}:{number}: field 'example' must be an object with 'question' and 'solution'")
    return WorkedExample(_field(path, number, example, "question", str), _field(path, number, example, "solution", str))


def _level_field(path, number, record):
    level = _field(path, number, record, "level", int)
    if level not in LEVELS:
        raise ValueError(f"{path}:{number}: field 'level' must be one of {LEVELS}, got {level}")
    return level


def _bundled(kind: str, split: str, path) -> pathlib.Path:
    if path is not None:
        return pathlib.Path(path)
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    return DATASETS / f"reasoning_{kind}_{split}.jsonl"


def load_problems(split: str = "train", *, path: str | pathlib.Path | None = None) -> list[Problem]:
    """The bundled problems: split 'train' (full solutions, e.g. for router training) or 'test' (held-out,
    60 per level, 200 per in-band level). With path, reads that JSONL file instead. Raises ValueError naming
    the file and line of the first malformed record; an empty file is an error too."""
    path = _bundled("problems", split, path)
    problems = []
    for number, record in read_jsonl_objects(path):
        steps = record.get("steps")
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) and s.strip() for s in steps):
            raise ValueError(f"{path}:{number}: field 'steps' must be a non-empty list of non-empty strings")
        problems.append(Problem(_field(path, number, record, "id", str), _field(path, number, record, "question", str),
                                tuple(steps), _field(path, number, record, "answer", int),
                                _level_field(path, number, record), record.get("topic", "") or "",
                                _example_field(path, number, record)))
    if not problems:
        raise ValueError(f"{path}: no problems (the file is empty)")
    return problems


def load_step_pairs(split: str = "train", *, path: str | pathlib.Path | None = None) -> list[StepPair]:
    """The bundled Math-Step-DPO-style step pairs: split 'train' or 'test' (pairs on the held-out
    problems). With path, reads that JSONL file instead. Raises ValueError naming the file and line of the
    first malformed record; an empty file is an error too."""
    path = _bundled("steps", split, path)
    pairs = []
    for number, record in read_jsonl_objects(path):
        text = {name: _field(path, number, record, name, str, empty_ok=name == "initial_reason_steps")
                for name in ("prompt", "initial_reason_steps", "chosen", "rejected", "full_chosen", "full_rejected")}
        if text["chosen"] == text["rejected"]:
            raise ValueError(f"{path}:{number}: 'chosen' and 'rejected' are the same")
        error_type = _field(path, number, record, "error_type", str)
        if error_type not in ERROR_TYPES:
            raise ValueError(f"{path}:{number}: field 'error_type' must be one of {ERROR_TYPES}, got {error_type!r}")
        pairs.append(StepPair(**text, answer=_field(path, number, record, "answer", int),
                              level=_level_field(path, number, record), error_type=error_type,
                              problem_id=record.get("problem_id", "") or "",
                              step_index=record.get("step_index", 0) or 0, example=_example_field(path, number, record)))
    if not pairs:
        raise ValueError(f"{path}: no step pairs (the file is empty)")
    return pairs
