"""The offline judges of the two bundled preference dimensions, on hand-written replies."""
from __future__ import annotations

import pytest

from fastdoctor import judges


def test_concision_scores_short_finished_replies_best():
    eight = "Sorry to hear that, I hope tomorrow is better."  # 9 words, finished
    long = " ".join(["This is a long reply that keeps going."] * 5)  # 40 words, finished
    scores = judges.concision_scores([eight, long])
    assert scores[0] > scores[1] > 0
    assert scores[0] == pytest.approx(1.0 * (1 - 9 / 64))
    assert scores[1] == pytest.approx(1 - 40 / 64)


def test_degenerate_replies_cannot_win_concision():
    empty, cut_off = "", "I am so sorry to hear that your train was cancelled, it must have been"
    one_word, two_words = "Ok.", "Thank you!"
    good = "That sounds frustrating; I hope the next train is on time."
    scores = dict(zip(["empty", "cut", "one", "two", "good"],
                      judges.concision_scores([empty, cut_off, one_word, two_words, good])))
    assert scores["empty"] == 0.0 and scores["cut"] == 0.0
    assert scores["one"] == pytest.approx(1 / 8 * (1 - 1 / 64)) and scores["two"] == pytest.approx(2 / 8 * (1 - 2 / 64))
    assert scores["good"] > max(scores["empty"], scores["cut"], scores["one"], scores["two"])
    assert judges.concision_score(" ".join(["word"] * 80) + ".") == 0.0  # past LONG words: nothing left


def test_a_sentence_end_behind_quotes_or_markdown_counts_as_finished():
    assert judges.is_finished('He said "see you soon."')
    assert judges.is_finished("**Stay calm!**")
    assert judges.is_finished("Really?)")
    assert not judges.is_finished("and then")
    assert not judges.is_finished("   ")
    assert judges.word_count("It's a dog's life, isn't it?") == 6


def test_the_judge_registry():
    assert judges.judge("concision") is judges.concision_scores
    assert judges.judge("positivity")(["What a wonderful day!"])[0] > 0.5
    with pytest.raises(ValueError, match="no judge for dimension 'tone'"):
        judges.judge("tone")
