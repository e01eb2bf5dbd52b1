"""Tokenizer conventions shared by both methods: chat-template ids, splitting a response off its prompt,
the one pad-id rule, and the vocabulary fingerprint that files record."""
from __future__ import annotations

import hashlib
import json

import torch


def encode(tokenizer, text: str) -> torch.Tensor:
    """Token ids of `text` as int64 [n], no special tokens added (chat templates carry their own)."""
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.int64)


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The chat template's ids for `messages`; with the assistant turn opened when the last one is the user's."""
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=messages[-1]["role"] == "user",
                                            tokenize=True, return_dict=True)
    return list(encoded["input_ids"])


def split_response(tokenizer, messages: list[dict], response: str, index: int, which: str, *,
                   finished: bool = True) -> tuple[list[int], list[int]]:
    """(prefix ids with the generation prompt, response ids through the end-of-turn token) of `response` as
    the assistant's reply to `messages`; `index` and `which` ('chosen', 'rejected') name it in errors.

    finished=False: the reply was cut off at a token limit, so it ends without the end-of-turn token (training
    on an EOS the model never emitted would teach it to stop, or with a rejected reply never to stop)."""
    prefix = chat_ids(tokenizer, messages)
    full = chat_ids(tokenizer, [*messages, {"role": "assistant", "content": response}])
    if full[: len(prefix)] != prefix:
        raise ValueError(f"pair {index}: the chat template does not extend the prompt with the {which} response; "
                         "cannot separate response tokens")
    tail = full[len(prefix):]
    eos = tokenizer.eos_token_id
    if eos is not None and eos in tail:
        tail = tail[: tail.index(eos) + 1]  # through the end-of-turn token, not the template's trailing newline
    if not tail or (len(tail) == 1 and tail[0] == eos):
        raise ValueError(f"pair {index}: the {which} response is empty")
    if not finished and tail[-1] == eos:
        tail = tail[:-1]
    return prefix, tail


def reply_finished(pair, which: str) -> bool:
    """Whether the `which` ('chosen' / 'rejected') reply of a pair ended by itself: the optional fields
    chosen_finished / rejected_finished (the concision set records them; a reply cut off at the token limit
    then trains without an end-of-turn token). Absent means finished, the convention of plain JSONL pairs."""
    value = getattr(pair, "extra", {}).get(f"{which}_finished", True)
    if not isinstance(value, bool):
        raise ValueError(f"{which}_finished: expected true or false, got {value!r}")
    return value


def pad_id(tokenizer) -> int:
    """The id that fills padded positions: the tokenizer's pad token, else its EOS token, else 0. Padded
    positions are masked out everywhere, so the choice only has to be a valid id."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def vocab_fingerprint(tokenizer) -> str:
    """A digest of the token -> id map: rewards files, doctors and routers record it, so a file made with
    another tokenizer is refused with a clear error instead of training on mismatched ids."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(vocab.encode()).hexdigest()


def vocab_record(tokenizer) -> str | None:
    """What a file records as its vocabulary: the tokenizer's fingerprint, or None when none was given."""
    return vocab_fingerprint(tokenizer) if tokenizer is not None else None


def check_vocab(recorded: str | None, tokenizer, where, what: str) -> None:
    """A ValueError unless a file's recorded vocabulary is `tokenizer`'s; nothing to check when either is missing
    (files from before the record, or a caller without a tokenizer). `what` says what the file holds ('the
    doctor was trained'), `where` names the file."""
    if recorded is not None and tokenizer is not None and recorded != vocab_fingerprint(tokenizer):
        raise ValueError(f"{where}: {what} with another tokenizer than the one given (the vocabulary fingerprints "
                         "differ); patient and doctors must share one vocabulary")


def max_token_bytes(tokenizer) -> int:
    """An upper bound on the UTF-8 bytes one token can stand for (4 per character of its longest vocabulary
    entry), so a text can be proven too long for a context before the slow work of tokenising it."""
    cached = getattr(tokenizer, "_fastdoctor_max_token_bytes", None)
    if cached is None:
        cached = 4 * max((len(token) for token in tokenizer.get_vocab()), default=1)
        try:
            tokenizer._fastdoctor_max_token_bytes = cached
        except AttributeError:  # a tokenizer that refuses new attributes is simply not cached
            pass
    return cached
