"""The generator of the bundled TARo reasoning data (build time only: make_reasoning.py runs it).

Problems are short multi-step word problems (shopping, savings, travel, baking, an orchard, reading, a
classroom) in difficulty levels 0-4, with step pairs in Math-Step-DPO's fields and the error types of
fastdoctor.taro.reasoning (its docstring describes the levels, the fields and the error types). Every solution
step is one sentence with one explicit equation, and the solution ends with "The answer is N.".

All randomness comes from a `random.Random` passed in (or made from a seed): no global RNG.
"""
from __future__ import annotations

import dataclasses
import random
import re

from ..taro.reasoning import ERROR_TYPES, LEVELS, Problem, StepPair, final_answer_line
from .reasoning_scenarios import PEOPLE, PRONOUNS, Op, Scenario, SCENARIOS, ARITHMETIC

GENERATOR_VERSION = "3"  # 2: level 0 added; 3: in-band levels 5 and 6 added. Older levels are drawn as before.

@dataclasses.dataclass(frozen=True)
class _Level:
    ops: int                        # number of ops after the start (a product start adds one step)
    product_start: bool
    start: tuple[int, int]          # range of a (given start) or of both factors a, b (product start)
    start_b: tuple[int, int]        # range of b for a product start
    add: tuple[int, int]
    kinds: tuple[str, ...]
    mul: tuple[int, int] = (2, 5)
    div: tuple[int, int] = (2, 9)
    max_value: int = 99
    min_value: int = 2
    carries: bool = False           # prefer additions/subtractions with a carry/borrow
    whole_operands: bool = False    # operands always inside `add` (else a subtraction may take a smaller one)


def _level_spec(level: int, rng: random.Random) -> _Level:
    """The level's settings (levels 3 and 4 draw their number of ops with rng). Calibrated on the default
    patient: see 'probe' in datasets/reasoning.meta.json."""
    if level == 0:  # first numbers up to 29: single digits alone give too few distinct questions for the split
        return _Level(ops=1, product_start=False, start=(2, 29), start_b=(0, 0), add=(2, 9), kinds=("add", "sub"),
                      max_value=38)
    if level == 1:
        return _Level(ops=1, product_start=False, start=(2, 9), start_b=(0, 0), add=(2, 9), kinds=("add", "sub"),
                      max_value=18)
    if level == 2:
        return _Level(ops=2, product_start=False, start=(3, 12), start_b=(0, 0), add=(2, 9),
                      kinds=("add", "sub", "mul"), mul=(2, 3), max_value=40)
    if level == 3:
        return _Level(ops=rng.choice((2, 3)), product_start=True, start=(2, 9), start_b=(11, 60), add=(11, 99),
                      kinds=("add", "sub", "mul", "div", "rsub"), mul=(2, 9), div=(2, 9), max_value=999)
    if level == 4:
        return _Level(ops=rng.choice((4, 5)), product_start=True, start=(12, 48), start_b=(13, 99),
                      add=(25, 999), kinds=("add", "sub", "mul", "div", "rsub"), mul=(3, 12), div=(2, 12),
                      max_value=99999, carries=True)
    if level == 5:  # level 0's form: the worked example is what puts it in band (first numbers up to 44 or 59
        return _level_spec(0, rng)  # measured 0.31 and 0.26 with an example, against 0.46 up to 29)
    if level == 6:  # bare, the second number 10-29 (bench/probe_taro_levels.py measures the candidates)
        return _Level(ops=1, product_start=False, start=(2, 29), start_b=(0, 0), add=(10, 29), kinds=("add", "sub"),
                      max_value=58, whole_operands=True)
    raise ValueError(f"level: expected one of {LEVELS}, got {level!r}")


def _has_carry(x: int, n: int, kind: str) -> bool:
    if kind == "add":
        return _no_carry(x, n, "add") != x + n
    if kind == "sub":
        return _no_carry(x, n, "sub") != x - n
    if kind == "rsub":
        return _no_carry(n, x, "sub") != n - x
    return False


def _no_carry(a: int, b: int, kind: str) -> int | None:
    """a + b, a - b (a >= b) or a * b (one factor a single digit) worked column by column with every carry
    (or borrow) dropped: the 'dropped carry' slip, e.g. 354 + 58 -> 302, 972 - 848 -> 134, 6 * 59 -> 304.
    The leftmost column keeps its whole value (nothing is left to carry into). None where it does not apply."""
    if kind == "mul":
        if b > 9:
            a, b = b, a
        if b > 9:
            return None
        top = max(len(str(a)), 1)
    else:
        top = max(len(str(a)), len(str(b)))
    da, db = str(a)[::-1], str(b)[::-1]
    columns = []
    for i in range(top):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        value = x + y if kind == "add" else x - y if kind == "sub" else x * b
        columns.append(str(value) if i == top - 1 and value >= 0 else str(value % 10))
    return int("".join(reversed(columns)))


def _apply(kind: str, x: int, n: int) -> int | None:
    """The op's result, or None when it is not a positive whole number."""
    if kind == "add":
        y = x + n
    elif kind == "sub":
        y = x - n
    elif kind == "mul":
        y = x * n
    elif kind == "div":
        if n == 0 or x % n:
            return None
        y = x // n
    elif kind == "rsub":
        y = n - x
    else:
        raise ValueError(kind)
    return y if y > 0 else None


_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/", "rsub": "-"}


def _equation(kind: str, x: int, n: int, y: int) -> str:
    left, right = (n, x) if kind == "rsub" else (x, n)
    return f"{left} {_SYMBOL[kind]} {right} = {y}"


@dataclasses.dataclass
class _Chain:
    scenario: Scenario
    fmt: dict                          # person and scenario words
    start: int                         # a
    factor: int | None                 # b for a product start
    ops: list[tuple[Op, int]]

    @property
    def numbers(self) -> list[int]:
        return [self.start] + ([self.factor] if self.factor is not None else []) + [n for _, n in self.ops]

    def question(self) -> str:
        sc = self.scenario
        parts = [(sc.product_q if self.factor is not None else sc.given).format(a=self.start, b=self.factor,
                                                                                **self.fmt)]
        parts += [op.q.format(n=n, **self.fmt) for op, n in self.ops]
        last_n = self.ops[-1][1] if self.ops else None
        ask = self.ops[-1][0].ask if self.ops else (sc.product_ask if self.factor is not None else sc.given_ask)
        parts.append(ask.format(n=last_n, **self.fmt))
        return " ".join(_cap(p) for p in parts if p)  # level 0's bare sums have no separate ask

    def step_specs(self) -> list[tuple[str, str, int, int]]:
        """(template, kind, x, n) for each solution step; x is the product start's first factor, and None
        for the ops (they act on the running amount)."""
        specs = []
        if self.factor is not None:
            specs.append((self.scenario.product_s, "mul", self.start, self.factor))
        return specs + [(op.s, op.kind, None, n) for op, n in self.ops]

    def solve(self, start_index: int = 0, x: int | None = None) -> list[tuple[str, str, int, int, int]] | None:
        """(template, kind, x, n, y) for the steps from start_index on, starting from amount x (default: the
        true running amount); None if some step's result is not a positive whole number."""
        specs = self.step_specs()
        if x is None:
            x = self.start
            for template, kind, sx, n in specs[:start_index]:
                x = _apply(kind, sx if sx is not None else x, n)
        rows = []
        for template, kind, sx, n in specs[start_index:]:
            left = sx if sx is not None else x  # the product start multiplies its own two factors
            y = _apply(kind, left, n)
            if y is None:
                return None
            rows.append((template, kind, left, n, y))
            x = y
        return rows

    def render(self, template: str, kind: str, x: int, n: int, y: int, *, equation: str | None = None) -> str:
        """The step text: its prose names n (and, for the product start, a = x and b = n); the equation is
        'x op n = y' unless a (wrong) one is given."""
        eq = equation if equation is not None else _equation(kind, x, n, y)
        return _cap(template.format(eq=eq, n=n, a=x, b=n, **self.fmt))


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _sample_chain(rng: random.Random, level: int) -> _Chain | None:
    spec = _level_spec(level, rng)
    scenario = ARITHMETIC if level in (0, 5, 6) else rng.choice(SCENARIOS)
    name, pronoun = rng.choice(PEOPLE)
    cap, pr, obj, pos = PRONOUNS[pronoun]
    fmt = {"name": name, "Pr": cap, "pr": pr, "pr_obj": obj, "pr_pos": pos, "Pr_pos": _cap(pos)}
    for key, options in scenario.words.items():
        fmt[key] = rng.choice(options)
    if spec.product_start:
        a, b = rng.randint(*spec.start), rng.randint(*spec.start_b)
        if a == b:
            return None
        x, factor = a * b, b
    else:
        a = rng.randint(*spec.start)
        x, factor = a, None
    if x > spec.max_value:
        return None
    used = set()
    ops: list[tuple[Op, int]] = []
    for i in range(spec.ops):
        last = i == spec.ops - 1
        candidates = [op for j, op in enumerate(scenario.ops)
                      if j not in used and op.kind in spec.kinds and (last or not op.final)]
        rng.shuffle(candidates)
        chosen = None
        for op in candidates:
            n = _sample_operand(rng, spec, op.kind, x)
            if n is not None:
                chosen = (op, n)
                break
        if chosen is None:
            return None
        used.add(scenario.ops.index(chosen[0]))
        ops.append(chosen)
        x = _apply(chosen[0].kind, x, chosen[1])
    chain = _Chain(scenario, fmt, a, factor, ops)
    numbers = chain.numbers
    if len(set(numbers)) != len(numbers):  # every number in the problem distinct: steps are unambiguous
        return None
    return chain


def _sample_operand(rng: random.Random, spec: _Level, kind: str, x: int) -> int | None:
    lo, hi = spec.add
    for attempt in range(30):
        if kind == "add":
            n = rng.randint(lo, hi)
        elif kind == "sub":
            top = min(hi, x - spec.min_value)
            if top < 2 or (spec.whole_operands and top < lo):
                return None
            n = rng.randint(min(lo, top), top)
        elif kind == "mul":
            n = rng.randint(*spec.mul)
        elif kind == "div":
            divisors = [d for d in range(spec.div[0], spec.div[1] + 1) if x % d == 0 and x // d >= spec.min_value]
            if not divisors:
                return None
            n = rng.choice(divisors)
        elif kind == "rsub":
            step = 10 if x < 100 else 100 if x < 2000 else 1000
            n = (x // step + rng.randint(1, 3)) * step
            if spec.carries:
                n += rng.choice((0, 0, rng.randint(1, step - 1)))
        else:
            raise ValueError(kind)
        y = _apply(kind, x, n)
        if y is None or y < spec.min_value or y > spec.max_value or n == x:
            continue
        if spec.carries and kind in ("add", "sub", "rsub") and not _has_carry(x, n, kind) and attempt < 25:
            continue
        return n
    return None


def _chain(rng: random.Random, level: int) -> _Chain:
    if level not in LEVELS:
        raise ValueError(f"level: expected one of {LEVELS}, got {level!r}")
    for _ in range(1000):
        chain = _sample_chain(rng, level)
        if chain is not None:
            return chain
    raise RuntimeError(f"could not sample a level-{level} problem")  # pragma: no cover


def _problem_from_chain(chain: _Chain, level: int, problem_id: str) -> Problem:
    rows = chain.solve()
    steps = tuple(chain.render(*row) for row in rows)
    return Problem(problem_id, chain.question(), steps, rows[-1][4], level, chain.scenario.topic)


def generate_problem(rng: random.Random, level: int, problem_id: str = "") -> Problem:
    """One problem of the given level (0..6), drawn with rng (a random.Random; no global RNG is used)."""
    return _problem_from_chain(_chain(rng, level), level, problem_id)


def generate_problems(count: int, level: int | tuple[int, ...] = LEVELS, seed: int = 0, *,
                      prefix: str = "p") -> list[Problem]:
    """count problems from random.Random(seed), cycling through the given level(s); distinct questions."""
    rng = random.Random(seed)
    levels = (level,) if isinstance(level, int) else tuple(level)
    problems: list[Problem] = []
    seen: set[str] = set()
    while len(problems) < count:
        lv = levels[len(problems) % len(levels)]
        problem = generate_problem(rng, lv, f"{prefix}{len(problems):05d}")
        if problem.question not in seen:
            seen.add(problem.question)
            problems.append(problem)
    return problems


_NAME_RE = re.compile(r"\b(?:" + "|".join(name for name, _ in PEOPLE) + r"|he|she|him|her|his)\b", re.IGNORECASE)


def question_skeleton(question: str) -> str:
    """The question with the person's name and pronouns blanked out: two questions that differ only in who
    is asked about share a skeleton (the bundled held-out split is disjoint from train by skeleton)."""
    return _NAME_RE.sub("_", question)


# ------------------------------------------------------------------------------------------------ step pairs


def _rejected_candidates(chain: _Chain, rows, k: int, error_type: str, rng: random.Random):
    """Yields (wrong step text, wrong value) for step k under the given error type."""
    template, kind, x, n, y = rows[k]
    if error_type == "arithmetic_slip":
        deltas = [1, -1, 2, -2] + ([10, -10] if y >= 20 else [])
        rng.shuffle(deltas)
        for d in deltas:
            if y + d > 0:
                yield chain.render(template, kind, x, n, y, equation=_equation(kind, x, n, y + d)), y + d
    elif error_type == "digit_swap":
        digits = str(y)
        spots = [i for i in range(len(digits) - 1) if digits[i] != digits[i + 1] and not (i == 0 and digits[1] == "0")]
        rng.shuffle(spots)
        for i in spots:
            wrong = int(digits[:i] + digits[i + 1] + digits[i] + digits[i + 2:])
            yield chain.render(template, kind, x, n, y, equation=_equation(kind, x, n, wrong)), wrong
    elif error_type == "dropped_carry":
        if kind in ("add", "mul"):
            wrong = _no_carry(x, n, kind)
        elif kind == "sub":
            wrong = _no_carry(x, n, "sub")
        elif kind == "rsub":
            wrong = _no_carry(n, x, "sub")
        else:
            wrong = None
        if wrong is not None and wrong != y and wrong > 0:
            yield chain.render(template, kind, x, n, y, equation=_equation(kind, x, n, wrong)), wrong
    elif error_type == "wrong_operand":
        others = [m for m in dict.fromkeys(chain.numbers) if m not in (n, x)]
        if k == 0 and chain.factor is not None:  # the product start: misread either factor
            options = [("n", m) for m in others] + [("x", m) for m in others]
        else:
            options = [("n", m) for m in others]
        rng.shuffle(options)
        for which, m in options:
            nx, nn = (m, n) if which == "x" else (x, m)
            wrong = _apply(kind, nx, nn)
            if wrong is not None and wrong != y:
                yield chain.render(template, kind, nx, nn, wrong), wrong
    elif error_type == "wrong_operation":
        alternatives = {"add": ["mul", "sub"], "sub": ["add"], "mul": ["add"], "div": ["mul", "sub"],
                        "rsub": ["add"]}[kind]
        rng.shuffle(alternatives)
        for other in alternatives:
            if kind == "rsub":
                wrong = n + x
                eq = f"{n} + {x} = {wrong}"
            else:
                wrong = _apply(other, x, n)
                eq = None if wrong is None else _equation(other, x, n, wrong)
            if wrong is not None and wrong != y:
                yield chain.render(template, kind, x, n, y, equation=eq), wrong
    else:
        raise ValueError(f"error_type: expected one of {ERROR_TYPES}, got {error_type!r}")


def _make_pair(chain: _Chain, problem: Problem, k: int, error_type: str, rng: random.Random) -> StepPair | None:
    rows = chain.solve()
    for rejected, wrong in _rejected_candidates(chain, rows, k, error_type, rng):
        if rejected == problem.steps[k]:
            continue
        rest = chain.solve(k + 1, wrong)
        if rest is None:
            continue  # the wrong value cannot be carried through (e.g. no longer divisible)
        wrong_answer = rest[-1][4] if rest else wrong
        if wrong_answer == problem.answer:
            continue
        full_rejected = "\n".join([rejected] + [chain.render(*row) for row in rest] + [final_answer_line(wrong_answer)])
        return StepPair(problem.question, "\n".join(problem.steps[:k]), problem.steps[k], rejected,
                        "\n".join((*problem.steps[k:], final_answer_line(problem.answer))), full_rejected,
                        problem.answer, problem.level, error_type, problem.id, k)
    return None


def generate_step_pairs(rng: random.Random, level: int, pairs: int = 2, problem_id: str = "",
                        error_types: tuple[str, ...] = ERROR_TYPES) -> tuple[Problem, list[StepPair]]:
    """A fresh problem of the given level and `pairs` step pairs on it (on different steps where the
    solution has enough, with error types drawn from error_types among those that apply)."""
    for _ in range(1000):
        chain = _chain(rng, level)
        problem = _problem_from_chain(chain, level, problem_id)
        steps = list(range(len(problem.steps)))
        rng.shuffle(steps)
        order = [steps[i % len(steps)] for i in range(pairs)]
        made: list[StepPair] = []
        for k in order:
            types = list(error_types)
            rng.shuffle(types)
            for error_type in types:
                if any(p.step_index == k and p.error_type == error_type for p in made):
                    continue
                pair = _make_pair(chain, problem, k, error_type, rng)
                if pair is not None:
                    made.append(pair)
                    break
        if len(made) == pairs:
            return problem, made
    raise RuntimeError(f"could not make {pairs} step pairs for a level-{level} problem")  # pragma: no cover
