"""Step-wise arithmetic reasoning data (fastdoctor.taro.reasoning, datasets/reasoning_generator): generator, step
pairs, verifier, bundled split."""
from __future__ import annotations

import hashlib
import json
import random

import pytest

from fastdoctor.taro import reasoning
from fastdoctor.datasets import make_reasoning
from fastdoctor.datasets import reasoning_generator as generator

META = json.loads((reasoning.DATASETS / "reasoning.meta.json").read_text())


# ------------------------------------------------------------------------------------------------ generator


@pytest.mark.parametrize("level", reasoning.LEVELS)
def test_generator_is_deterministic_for_a_seed_and_differs_across_seeds(level):
    first = generator.generate_problems(12, level, seed=3)
    assert first == generator.generate_problems(12, level, seed=3)
    assert [p.question for p in first] != [p.question for p in generator.generate_problems(12, level, seed=4)]
    one, two = random.Random(9), random.Random(9)
    assert generator.generate_step_pairs(one, level, 2) == generator.generate_step_pairs(two, level, 2)


def test_generator_leaves_the_global_rng_alone():
    random.seed(123)
    expected = random.random()
    random.seed(123)
    generator.generate_problems(20, seed=0)
    generator.generate_step_pairs(random.Random(1), 4, 3)
    assert random.random() == expected


@pytest.mark.parametrize("level", reasoning.LEVELS)
def test_solutions_are_arithmetically_right_and_end_with_the_answer(level):
    steps_per_level = {0: {1}, 1: {1}, 2: {2}, 3: {3, 4}, 4: {5, 6}, 5: {1}, 6: {1}}
    for problem in generator.generate_problems(40, level, seed=11):
        assert problem.level == level and len(problem.steps) in steps_per_level[level]
        assert problem.question.endswith("?")
        for step in problem.steps:
            assert reasoning.check_step(step, require_equation=True), step
            assert len(reasoning.find_equations(step)) == 1
        assert problem.solution.splitlines()[-1] == f"The answer is {problem.answer}."
        assert reasoning.is_correct(problem.solution, problem.answer)
        # the last equation's result is the answer
        assert int(reasoning.find_equations(problem.steps[-1])[0][1]) == problem.answer > 0


def test_levels_grow_in_size():
    biggest = {level: max(max(int(right) for step in p.steps for _, right in reasoning.find_equations(step))
                          for p in generator.generate_problems(60, level, seed=5)) for level in reasoning.LEVELS}
    assert biggest[1] <= 18 < biggest[3] < biggest[4] and biggest[0] <= 38 and biggest[5] <= 38
    assert biggest[6] <= 58
    with pytest.raises(ValueError, match="level"):
        generator.generate_problem(random.Random(0), 7)
    with pytest.raises(ValueError, match="level"):
        generator.generate_problem(random.Random(0), -1)


@pytest.mark.parametrize("level", [0, 5, 6])
def test_levels_zero_five_and_six_are_bare_arithmetic(level):
    for problem in generator.generate_problems(30, level, seed=2):
        assert problem.question.startswith("What is ") and problem.question.endswith("?")
        (left, right), = reasoning.find_equations(problem.steps[0])
        assert problem.question == f"What is {left}?" and int(right) == problem.answer
        assert problem.steps[0] == f"{left} = {right}." and problem.topic == "arithmetic"
        first, second = (int(n) for n in left.replace("+", "-").split(" - "))
        assert 2 <= first <= 29 and (10 <= second <= 29 if level == 6 else 2 <= second <= 9)


@pytest.mark.parametrize("level", reasoning.LEVELS)
def test_chosen_steps_pass_and_arithmetic_slips_fail_check_step(level):
    rng = random.Random(level)
    kinds = set()
    for i in range(40):
        problem, pairs = generator.generate_step_pairs(rng, level, 2, f"x{i}")
        for pair in pairs:
            kinds.add(pair.error_type)
            k = pair.step_index
            assert pair.prompt == problem.question and pair.answer == problem.answer and pair.level == level
            assert pair.chosen == problem.steps[k] and pair.chosen != pair.rejected
            assert pair.initial_reason_steps == "\n".join(problem.steps[:k])
            assert reasoning.check_step(pair.chosen, require_equation=True)
            chosen_value = reasoning.find_equations(pair.chosen)[0][1]
            rejected_value = reasoning.find_equations(pair.rejected)[0][1]
            assert rejected_value != chosen_value  # the wrong step's result is really wrong
            if pair.error_type in reasoning.ARITHMETIC_ERROR_TYPES:
                assert not reasoning.check_step(pair.rejected), pair
            else:  # right arithmetic on the wrong number or with the wrong operation
                assert reasoning.check_step(pair.rejected), pair
            assert pair.full_chosen == "\n".join(problem.steps[k:]) + f"\nThe answer is {problem.answer}."
            assert pair.full_rejected.startswith(pair.rejected + "\n")
            assert reasoning.is_correct(pair.full_chosen, pair.answer)
            assert not reasoning.is_correct(pair.full_rejected, pair.answer)
            assert all(reasoning.check_step(s) for s in pair.full_rejected.splitlines()[1:])
    assert {"arithmetic_slip", "wrong_operation"} <= kinds


def test_dropped_carry_slips():
    assert generator._no_carry(354, 58, "add") == 302
    assert generator._no_carry(972, 848, "sub") == 134
    assert generator._no_carry(6, 59, "mul") == 304
    assert generator._no_carry(23, 41, "add") == 64  # no carry: no slip
    assert generator._no_carry(23, 41, "mul") is None


def test_format_prompt_is_the_instruction_and_the_question():
    text = reasoning.format_prompt("  Sam has 3 apples and buys 4 more. How many apples does he have?\n")
    assert text == ("Solve the problem step by step. End with 'The answer is N.'\n\n"
                    "Sam has 3 apples and buys 4 more. How many apples does he have?")
    with pytest.raises(ValueError, match="question"):
        reasoning.format_prompt("  ")


# ------------------------------------------------------------------------------------------------ verifier


@pytest.mark.parametrize("text, expected", [
    ("3 + 4 = 7.\nThe answer is 7.", 7),
    ("The answer is 1,234.", 1234),
    ("the answer is: $56", 56),
    ("Answer: 12", 12),
    ("Final answer = 9", 9),
    ("The answer is **42**.", 42),
    ("So the answer is $\\boxed{15}$.", 15),
    ("The answer is 3. Wait, no. The answer is 5.", 5),
    ("The answer is 8 apples", 8),
    ("The answer is 20.0.", 20),
    ("The answer is 5, because 2 + 3 = 5.", 5),
    ("The answer is -3.", -3),
    ("The answer is 2.5.", None),
    ("The answer is N.", None),
    ("He has 3 + 4 = 7 apples.", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert reasoning.extract_answer(text) == expected


def test_last_number_fallback_only_when_asked():
    assert reasoning.extract_answer("He has 3 + 4 = 7 apples.") is None
    assert reasoning.extract_answer("He has 3 + 4 = 1,007 apples.", last_number_fallback=True) == 1007
    assert reasoning.extract_answer("The answer is 4. Then 9", last_number_fallback=True) == 4
    assert reasoning.extract_answer("no numbers", last_number_fallback=True) is None
    with pytest.raises(TypeError):
        reasoning.extract_answer(None)


def test_is_correct():
    assert reasoning.is_correct("so 2 * 3 = 6.\nThe answer is 6.", 6)
    assert not reasoning.is_correct("The answer is 7.", 6)
    assert not reasoning.is_correct("It is 6.", 6)
    assert reasoning.is_correct("It is 6.", 6, last_number_fallback=True)
    assert reasoning.is_correct("The answer is 12,500.", 12500)


@pytest.mark.parametrize("step, ok", [
    ("Tom buys 3 packs of 12 pencils, so he has 3 * 12 = 36 pencils.", True),
    ("Tom buys 3 packs of 12 pencils, so he has 3 * 12 = 38 pencils.", False),
    ("She pays 1,200 + 34 = 1,234 dollars.", True),
    ("Each gets 84 / 4 = 21 cookies.", True),
    ("Each gets 84 / 5 = 16 cookies.", False),
    ("So 6 x 3 = 18 and 18 - 4 = 14.", True),
    ("So 6 x 3 = 18 and 18 - 4 = 15.", False),
    ("In all 2 + 3 * 4 = 14.", True),
    ("A 3 ÷ 0 = 0 step.", False),
    ("It drops 5 - 7 = -2 degrees.", True),
    ("No equation here, 36 pencils.", True),
])
def test_check_step(step, ok):
    assert reasoning.check_step(step) is ok


def test_check_step_can_require_an_equation():
    assert reasoning.check_step("The answer is 7.")
    assert not reasoning.check_step("The answer is 7.", require_equation=True)


# ------------------------------------------------------------------------------------------------ bundled split


def test_bundled_files_equal_a_regeneration_with_the_recorded_seed():
    assert META["generator_version"] == generator.GENERATOR_VERSION
    parts = make_reasoning.build(META["seed"])
    for name in make_reasoning.FILES:
        body = (reasoning.DATASETS / f"reasoning_{name}.jsonl").read_text(encoding="utf-8")
        assert body == make_reasoning.serialise(parts[name]), name
        assert hashlib.sha256(body.encode()).hexdigest() == META["sha256"][name]
        assert len(parts[name]) == META["counts"][name]


def test_the_older_levels_are_byte_identical_to_generator_version_2():
    version_2 = {"problems_test": "638e89d7cd8d498d0487c6e9bf5b92030071235ebfc88533ecf7eb98070b89a4",
                 "steps_test": "2532e7607840af9bf1feb45ad75b878d0995c7b0ec8d5ecbd11cc299daa50711",
                 "steps_train": "6a76c023730c38839347268383f1b1270af016ec635c4e9a22f740b677f8ab83",
                 "problems_train": "016d486b06398221a4e574976cbdf2f8c47fa20912103f478a747118451d0459"}
    parts = make_reasoning.build(META["seed"])
    for name, digest in version_2.items():
        older = [r for r in parts[name] if r["level"] not in reasoning.IN_BAND_LEVELS]
        assert hashlib.sha256(make_reasoning.serialise(older).encode()).hexdigest() == digest, name


def test_a_worked_example_is_an_earlier_chat_turn():
    from transformers import AutoTokenizer

    from fastdoctor.models import default_patient_path

    tokenizer = AutoTokenizer.from_pretrained(default_patient_path(), local_files_only=True)
    problem = next(p for p in reasoning.load_problems("test") if p.example)
    text = reasoning.chat_prompt(tokenizer, problem.question, problem.example)
    plain = reasoning.chat_prompt(tokenizer, problem.question)
    assert text.endswith(plain.split(reasoning.format_prompt(problem.question))[-1])  # the assistant turn is open
    order = [text.index(reasoning.format_prompt(problem.example.question)), text.index(problem.example.solution),
             text.index(reasoning.format_prompt(problem.question))]
    assert order == sorted(order) and text.count("assistant") == plain.count("assistant") + 1


def test_bundled_sizes_and_levels():
    test_problems, train_problems = reasoning.load_problems("test"), reasoning.load_problems("train")
    train_pairs, test_pairs = reasoning.load_step_pairs("train"), reasoning.load_step_pairs("test")
    assert (len(test_problems), len(train_problems), len(train_pairs), len(test_pairs)) == (700, 700, 1050, 210)
    for level in reasoning.LEVELS:
        in_band = level in reasoning.IN_BAND_LEVELS
        assert sum(p.level == level for p in test_problems) == (200 if in_band else 60)
        assert sum(p.level == level for p in train_pairs) == 150
        assert sum(p.level == level for p in train_problems) == 100
        for record in [*test_problems, *train_problems, *train_pairs, *test_pairs]:
            if record.level == level:  # the in-band levels carry their worked example, the others none
                assert (record.example is not None) is in_band
    probe = META["probe"]
    assert set(probe["accuracy"]) == {str(level) for level in reasoning.LEVELS} and probe["problems_per_level"] >= 100
    for level in reasoning.IN_BAND_LEVELS:  # the recorded measurement puts them in the band they are named for
        assert 0.25 <= probe["accuracy"][str(level)] <= 0.75
    total = sum((reasoning.DATASETS / f"reasoning_{name}.jsonl").stat().st_size for name in make_reasoning.FILES)
    assert total < 1_500_000  # 1.2 MB: the in-band levels repeat their worked example in every record
    for pair in train_pairs:
        assert reasoning.check_step(pair.chosen, require_equation=True)
        assert reasoning.check_step(pair.rejected) is (pair.error_type not in reasoning.ARITHMETIC_ERROR_TYPES)


def test_held_out_questions_are_not_in_train():
    test, train = reasoning.load_problems("test"), reasoning.load_problems("train")
    train_questions = {p.question for p in train} | {p.prompt for p in reasoning.load_step_pairs("train")}
    test_questions = {p.question for p in test}
    assert not test_questions & train_questions
    for level in reasoning.LEVELS:  # no question twice within a level (an in-band level may repeat an older
        for split in (test, train):  # level's question on the same side: its prompt carries the example)
            questions = [p.question for p in split if p.level == level]
            assert len(set(questions)) == len(questions), level
    older = [p.question for p in test if p.level not in reasoning.IN_BAND_LEVELS]
    assert len(set(older)) == len(older)
    skeleton = generator.question_skeleton
    assert not {skeleton(q) for q in test_questions} & {skeleton(q) for q in train_questions}
    assert {p.prompt for p in reasoning.load_step_pairs("test")} <= test_questions
    examples = {p.example.question for p in [*test, *train] if p.example}
    assert examples and not examples & (test_questions | train_questions)  # no problem is a worked example
    assert skeleton("Sam has 3 apples. He eats 2.") == skeleton("Mia has 3 apples. She eats 2.")


# ------------------------------------------------------------------------------------------------ loaders


def test_loaders_name_the_malformed_line(tmp_path):
    good_problem = reasoning.load_problems("test")[0].to_json()
    good_pair = reasoning.load_step_pairs("train")[0].to_json()
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps(good_problem) + "\n\n" + "{not json\n")
    with pytest.raises(ValueError, match=r"problems\.jsonl:3: not valid JSON"):
        reasoning.load_problems(path=path)
    path.write_text(json.dumps(good_problem) + "\n" + json.dumps({**good_problem, "answer": "7"}) + "\n")
    with pytest.raises(ValueError, match=r":2: field 'answer'"):
        reasoning.load_problems(path=path)
    path.write_text(json.dumps({**good_problem, "steps": []}) + "\n")
    with pytest.raises(ValueError, match=r":1: field 'steps'"):
        reasoning.load_problems(path=path)
    path.write_text(json.dumps({**good_problem, "example": "2 + 2 = 4"}) + "\n")
    with pytest.raises(ValueError, match=r":1: field 'example'"):
        reasoning.load_problems(path=path)
    path.write_text(json.dumps({**good_problem, "example": {"question": "What is 2 + 2?"}}) + "\n")
    with pytest.raises(ValueError, match=r":1: field 'solution'"):
        reasoning.load_problems(path=path)
    path.write_text(json.dumps({**good_problem, "level": 9}) + "\n")
    with pytest.raises(ValueError, match=r":1: field 'level'"):
        reasoning.load_problems(path=path)
    path.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match=r":1: expected a JSON object"):
        reasoning.load_problems(path=path)
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        reasoning.load_problems(path=path)

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps(good_pair) + "\n" + json.dumps({**good_pair, "rejected": good_pair["chosen"]}) + "\n")
    with pytest.raises(ValueError, match=r"pairs\.jsonl:2: 'chosen' and 'rejected' are the same"):
        reasoning.load_step_pairs(path=pairs)
    pairs.write_text(json.dumps({**good_pair, "error_type": "typo"}) + "\n")
    with pytest.raises(ValueError, match=r":1: field 'error_type'"):
        reasoning.load_step_pairs(path=pairs)
    broken = dict(good_pair)
    del broken["chosen"]
    pairs.write_text(json.dumps(good_pair) + "\n" + json.dumps(broken) + "\n")
    with pytest.raises(ValueError, match=r":2: field 'chosen' is missing"):
        reasoning.load_step_pairs(path=pairs)
    pairs.write_text(json.dumps({**good_pair, "initial_reason_steps": ""}) + "\n")
    assert reasoning.load_step_pairs(path=pairs)[0].initial_reason_steps == ""
    with pytest.raises(ValueError, match="split"):
        reasoning.load_problems("validation")


def test_records_round_trip_through_json(tmp_path):
    problems = generator.generate_problems(8, seed=1)
    path = tmp_path / "p.jsonl"
    path.write_text(make_reasoning.serialise([p.to_json() for p in problems]))
    assert reasoning.load_problems(path=path) == problems
    _, pairs = generator.generate_step_pairs(random.Random(2), 3, 3, "q")
    path.write_text(make_reasoning.serialise([p.to_json() for p in pairs]))
    assert reasoning.load_step_pairs(path=path) == pairs
