"""The offline, deterministic judges of the bundled preference dimensions. Each maps reply texts to scores,
higher is better, and none needs a network or a model:

  positivity  VADER's compound sentiment in [-1, 1] (the vaderSentiment package ships its lexicon);
  concision   a rule in [0, 1): short *finished* replies score high (see concision_scores).

The second dimension was chosen by measurement on the patient's own samples (datasets/make_concision.py,
concision.meta.json): it must be distinct from positivity (Spearman |rho| <= 0.5) and steerable (best-of-4
beats one sample by two standard errors), and no degenerate reply (empty, cut off, a word or two) may win it.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

# A reply counts as finished when its last visible character ends a sentence. Replies the decode cut off
# at max_new_tokens stop mid-sentence almost always (make_concision measured the agreement with EOS).
_TRAILING_CLOSERS = "\"')]}*_`”’»"
_SENTENCE_ENDS = ".!?…"
_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?")

# concision = min(1, words / FULL_THOUGHT) * (1 - words / LONG): a finished reply of FULL_THOUGHT words
# scores best (0.875); shorter ones are penalised (a word or two is not an answer), longer ones linearly.
FULL_THOUGHT = 8
LONG = 64


def word_count(text: str) -> int:
    return len(_WORD.findall(text))


def is_finished(text: str) -> bool:
    """True when the reply ends a sentence (after stripping closing quotes, brackets and markdown)."""
    stripped = text.rstrip().rstrip(_TRAILING_CLOSERS + " \n\t")
    return bool(stripped) and stripped[-1] in _SENTENCE_ENDS


def concision_score(text: str) -> float:
    """0 for an empty or cut-off reply, else min(1, n / 8) * max(0, 1 - n / 64) for a reply of n words.
    So a finished reply of 8 words scores 0.875, one of 32 words 0.5, and "Ok." 0.12: neither an empty nor
    a cut-off nor a one-word reply can score best."""
    words = word_count(text)
    if words == 0 or not is_finished(text):
        return 0.0
    return min(1.0, words / FULL_THOUGHT) * max(0.0, 1.0 - words / LONG)


def concision_scores(texts: Sequence[str]) -> list[float]:
    return [concision_score(t) for t in texts]


def vader_scores(texts: Sequence[str]) -> list[float]:
    """VADER compound sentiment in [-1, 1] (the vaderSentiment package ships its lexicon: offline)."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ModuleNotFoundError:
        raise ModuleNotFoundError("the positivity judge needs vaderSentiment: pip install vaderSentiment") from None
    analyzer = SentimentIntensityAnalyzer()
    return [analyzer.polarity_scores(t)["compound"] for t in texts]


JUDGES: dict[str, Callable[[Sequence[str]], list[float]]] = {"positivity": vader_scores,
                                                            "concision": concision_scores}


def judge(dimension: str) -> Callable[[Sequence[str]], list[float]]:
    if dimension not in JUDGES:
        raise ValueError(f"no judge for dimension {dimension!r} (known: {', '.join(JUDGES)})")
    return JUDGES[dimension]
