"""LLMdoctor stage 1: token-level rewards from the patient's positive and negative faces (METHODS.md §2.2).

For every preference pair, both responses are scored token by token (teacher forcing) under two system
prompts of the same frozen patient: delta_t = |log pi_pos(y_t) - log pi_neg(y_t)|, normalised by the
response's mean, squashed (tanh(. / tau)) and thresholded at theta, with the sign of the preference label.

Each face's prompt prefix is prefilled once and its KV cache reused for both responses, which then run
together as one batch: two prefills per pair instead of four. Log-probabilities come from the final hidden states and
the LM head, vocabulary chunk by chunk (ops.target_log_probs_from_hidden), so [T, V] logits never exist.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import time
from collections.abc import Sequence

import torch

from .. import ops
from ..files import atomic_file
from ..kv_cache import cache_kwargs, output_cache
from ..models import logits_width
from ..progress import Progress
from ..sequences import right_pad
from ..tokens import chat_ids, max_token_bytes, reply_finished, split_response, vocab_record
from .data import PreferencePair

FORMAT = "fastdoctor.rewards/1"


@dataclasses.dataclass(frozen=True)
class Faces:
    """The system prompts of the patient's two behavioural variants."""

    positive: str
    negative: str


# Defaults per METHODS.md §2.2 (the paper's Appendix F prompts were not available to us), plus a pair
# for each bundled preference dimension (positivity, concision).
FACES = {
    "general": Faces(
        positive="You are a helpful, accurate and polite assistant. Give comprehensive, useful and clear answers.",
        negative="You give minimal responses. Keep answers brief; they may omit important details and be less "
                 "helpful and incomplete."),
    "positivity": Faces(
        positive="You are a warm, cheerful and optimistic assistant. Answer kindly, encourage the user and look "
                 "on the bright side.",
        negative="You are a gloomy, pessimistic and curt assistant. Answer coldly and dwell on what is wrong."),
    "concision": Faces(
        positive="You are a concise assistant. Answer in one or two short, complete sentences, then stop.",
        negative="You are a long-winded assistant. Ramble at length, repeat yourself and never come to an end."),
}


@dataclasses.dataclass(frozen=True)
class RewardSettings:
    """tau: tanh temperature; theta: sparsity threshold on S = tanh(dhat / tau); eps: in the mean's
    denominator. Defaults per METHODS.md decision 9: theta = 0.65 gave 40-44% non-zero rewards on the
    bundled positivity set with either face pair (0.5 gave 51-54%, 0.75 gave 33-36%)."""

    tau: float = 1.0
    theta: float = 0.65
    eps: float = 1e-6
    faces: Faces = FACES["general"]
    chunk_size: int = 4096
    truncate: bool = False  # cut responses that do not fit the context instead of raising

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ScoredPair:
    prompt_ids: torch.Tensor  # the plain chat prompt (no face), as stage 2 will see it
    response_ids: tuple[torch.Tensor, torch.Tensor]  # chosen, rejected
    logp_pos: tuple[torch.Tensor, torch.Tensor]
    logp_neg: tuple[torch.Tensor, torch.Tensor]
    rewards: tuple[torch.Tensor, torch.Tensor]


def _lm_head_weight(model) -> torch.Tensor | None:
    """The LM head's weight when logits are exactly hidden @ weight.T (no bias, no soft-capping)."""
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        return None
    if getattr(model.config, "final_logit_softcapping", None):
        return None
    return head.weight


def _log_probs(model, hidden: torch.Tensor, response: torch.Tensor, weight, chunk_size: int) -> torch.Tensor:
    """log-probs [T] of `response` from the hidden states [T, H] that predict its tokens."""
    if weight is not None:
        return ops.target_log_probs_from_hidden(hidden, weight, response, chunk_size=chunk_size, validate=False)
    return ops.target_log_probs_from_logits(model.get_output_embeddings()(hidden), response, validate=False)


def _score_with_shared_prefix(model, prefix: torch.Tensor, responses: list[torch.Tensor], weight, chunk_size):
    """One prefill of the prefix (batch 1); its cache is repeated for the responses, which run together in
    one right-padded batch (padding sits after every real token, so causality keeps it out of sight)."""
    out = model.base_model(input_ids=prefix.unsqueeze(0), use_cache=True)
    last = out.last_hidden_state[0, -1:]
    longest = max(r.numel() for r in responses)
    if longest > 1:
        cache = output_cache(out)
        cache.batch_repeat_interleave(len(responses))
        batch = torch.zeros(len(responses), longest - 1, dtype=torch.int64, device=prefix.device)
        for j, r in enumerate(responses):
            batch[j, : r.numel() - 1] = r[:-1]
        body = model.base_model
        hidden = body(input_ids=batch, **cache_kwargs(body, cache), use_cache=True).last_hidden_state
    return [_log_probs(model, torch.cat([last, hidden[j, : r.numel() - 1]]) if r.numel() > 1 else last, r, weight,
                       chunk_size) for j, r in enumerate(responses)]


def _score_without_sharing(model, prefix: torch.Tensor, response: torch.Tensor, weight, chunk_size) -> torch.Tensor:
    """The baseline: prompt + response in one forward, per face and response (four prefills per pair)."""
    sequence = torch.cat([prefix, response]).unsqueeze(0)
    hidden = model.base_model(input_ids=sequence, use_cache=False).last_hidden_state[0, prefix.numel() - 1 : -1]
    return _log_probs(model, hidden, response, weight, chunk_size)


def _fit_text_before_tokenising(pair: PreferencePair, tokenizer, limit: int | None, truncate: bool,
                                index: int) -> PreferencePair:
    """Refuses (or, with truncate, cuts) a text that cannot fit the context whatever its tokenisation: a
    40 MB response used to be tokenised for minutes before the length check could refuse it."""
    if limit is None:
        return pair
    most = limit * max_token_bytes(tokenizer)
    fields = {}
    for name in ("prompt", "chosen", "rejected"):
        text = getattr(pair, name)
        size = len(text.encode("utf-8"))
        if size > most:
            if not truncate or name == "prompt":
                raise ValueError(f"pair {index}: the {name} text is {size} bytes, more than {limit} tokens of "
                                 f"the patient's context can hold" + ("" if name == "prompt" else
                                                                       " (set truncate=True to cut it)"))
            text = text.encode("utf-8")[:most].decode("utf-8", errors="ignore")
        fields[name] = text
    return dataclasses.replace(pair, **fields)


@torch.inference_mode()
def score_pair(model, tokenizer, pair: PreferencePair, settings: RewardSettings, index: int = 0,
               share_prefix: bool = True) -> ScoredPair:
    device = next(model.parameters()).device
    weight = _lm_head_weight(model)
    limit = getattr(model.config, "max_position_embeddings", None)
    pair = _fit_text_before_tokenising(pair, tokenizer, limit, settings.truncate, index)
    user = [{"role": "user", "content": pair.prompt}]
    prompt_ids = torch.tensor(chat_ids(tokenizer, user), dtype=torch.int64)
    faces = {"pos": settings.faces.positive, "neg": settings.faces.negative}
    prefixes, tails = {}, None
    for face_name, system in faces.items():
        messages = [{"role": "system", "content": system}, *user]
        split = [split_response(tokenizer, messages, text, index, which, finished=reply_finished(pair, which))
                 for text, which in ((pair.chosen, "chosen"), (pair.rejected, "rejected"))]
        prefixes[face_name] = torch.tensor(split[0][0], dtype=torch.int64, device=device)
        if tails is not None and tails != [tail for _, tail in split]:
            raise ValueError(f"pair {index}: the responses tokenise differently under the two faces")
        tails = [tail for _, tail in split]
    if limit is not None:
        room = limit - max(p.numel() for p in prefixes.values())
        for tail in tails:
            if len(tail) > room and not settings.truncate:
                raise ValueError(f"pair {index}: face prompt + response is {limit - room + len(tail)} tokens, more "
                                 f"than the patient's context of {limit} (set truncate=True to cut it)")
        tails = [tail[:room] for tail in tails]
    responses = [torch.tensor(tail, dtype=torch.int64, device=device) for tail in tails]
    logps = {}
    for face_name, prefix in prefixes.items():
        if share_prefix:
            logps[face_name] = _score_with_shared_prefix(model, prefix, responses, weight, settings.chunk_size)
        else:
            logps[face_name] = [_score_without_sharing(model, prefix, r, weight, settings.chunk_size)
                                for r in responses]
    logp_pos, mask = right_pad(logps["pos"], torch.float32, device)
    logp_neg, _ = right_pad(logps["neg"], torch.float32, device)
    rewards = ops.token_rewards_from_face_logprobs(logp_pos, logp_neg, mask, torch.tensor([1.0, -1.0], device=device),
                                                   tau=settings.tau, theta=settings.theta, eps=settings.eps)
    return ScoredPair(prompt_ids, tuple(r.cpu() for r in responses), tuple(x.cpu() for x in logps["pos"]),
                      tuple(x.cpu() for x in logps["neg"]),
                      (rewards[0, : responses[0].numel()].cpu(), rewards[1, : responses[1].numel()].cpu()))


def _fingerprint(settings: RewardSettings, tokenizer, data_digest: str, patient_name: str) -> str:
    blob = json.dumps({"settings": settings.to_json(), "vocab": vocab_record(tokenizer),
                       "data": data_digest, "patient": patient_name}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _atomic_save(tensors: dict, path: pathlib.Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    with atomic_file(path) as temporary:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(temporary), metadata=metadata)


def _pairs_to_tensors(scored: Sequence[ScoredPair]) -> dict[str, torch.Tensor]:
    tensors = {}
    tensors["prompt_ids"], tensors["prompt_mask"] = right_pad([s.prompt_ids for s in scored], torch.int64)
    for slot, name in ((0, "chosen"), (1, "rejected")):
        tensors[f"{name}_ids"], tensors[f"{name}_mask"] = right_pad([s.response_ids[slot] for s in scored],
                                                                    torch.int64)
        tensors[f"{name}_rewards"], _ = right_pad([s.rewards[slot] for s in scored], torch.float32)
        tensors[f"{name}_logp_pos"], _ = right_pad([s.logp_pos[slot] for s in scored], torch.float32)
        tensors[f"{name}_logp_neg"], _ = right_pad([s.logp_neg[slot] for s in scored], torch.float32)
    return tensors


def _tensors_to_pairs(tensors: dict[str, torch.Tensor]) -> list[ScoredPair]:
    def rows(name, mask_name):
        return [t[m] for t, m in zip(tensors[name], tensors[mask_name])]

    prompts = rows("prompt_ids", "prompt_mask")
    parts = {name: {kind: rows(f"{name}_{kind}", f"{name}_mask") for kind in ("ids", "rewards", "logp_pos", "logp_neg")}
             for name in ("chosen", "rejected")}
    return [ScoredPair(prompts[i], (parts["chosen"]["ids"][i], parts["rejected"]["ids"][i]),
                       (parts["chosen"]["logp_pos"][i], parts["rejected"]["logp_pos"][i]),
                       (parts["chosen"]["logp_neg"][i], parts["rejected"]["logp_neg"][i]),
                       (parts["chosen"]["rewards"][i], parts["rejected"]["rewards"][i])) for i in range(len(prompts))]


def acquire_rewards(model, tokenizer, pairs: Sequence[PreferencePair], out: str | os.PathLike,
                    settings: RewardSettings = RewardSettings(), *, share_prefix: bool = True,
                    patient_name: str = "", checkpoint_every: int = 25, stop_after: int | None = None) -> dict:
    """Scores every pair and writes `out` (safetensors, atomically): token ids, masks, rewards and face
    log-probs of chosen and rejected responses, the plain prompt ids, and the settings as metadata.

    Deterministic. Progress is checkpointed to `out`.partial every `checkpoint_every` pairs; a rerun with
    the same settings, data and patient resumes from it. `stop_after` stops early (as an interruption
    would), leaving the partial file. Returns a summary (pairs, tokens, non-zero reward fraction, seconds)."""
    from safetensors import safe_open

    if len(tokenizer) > logits_width(model):
        raise ValueError(f"tokenizer: {len(tokenizer)} tokens, but the patient emits {logits_width(model)} logits; "
                         "the tokenizer does not belong to this patient")
    if not pairs:
        raise ValueError("pairs: the preference data set is empty")
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)  # before the first checkpoint of the partial file
    partial = out.with_name(out.name + ".partial")
    digest = hashlib.sha256(json.dumps([[p.prompt, p.chosen, p.rejected] for p in pairs]).encode()).hexdigest()
    fingerprint = _fingerprint(settings, tokenizer, digest, patient_name)
    scored: list[ScoredPair] = []
    if partial.exists():
        with safe_open(str(partial), "pt") as handle:
            if handle.metadata().get("fingerprint") == fingerprint:
                scored = _tensors_to_pairs({k: handle.get_tensor(k) for k in handle.keys()})
    started = time.time()
    resumed = len(scored)
    progress = Progress("rewards", len(pairs), done=resumed, every=25, unit="pairs")
    try:
        for index in range(len(scored), len(pairs)):
            if stop_after is not None and index >= stop_after:
                return {"stopped_at": index}
            result = score_pair(model, tokenizer, pairs[index], settings, index, share_prefix)
            scored.append(result)
            progress.update({"pairs_per_s": (len(scored) - resumed) / max(time.time() - started, 1e-9)})
            if len(scored) % checkpoint_every == 0 and len(scored) < len(pairs):
                _atomic_save(_pairs_to_tensors(scored), partial, {"fingerprint": fingerprint})
    finally:
        progress.close()
        if stop_after is not None and scored and len(scored) < len(pairs):
            _atomic_save(_pairs_to_tensors(scored), partial, {"fingerprint": fingerprint})
    tensors = _pairs_to_tensors(scored)
    valid = torch.cat([tensors["chosen_mask"].flatten(), tensors["rejected_mask"].flatten()])
    values = torch.cat([tensors["chosen_rewards"].flatten(), tensors["rejected_rewards"].flatten()])[valid]
    summary = {"pairs": len(scored), "response_tokens": int(valid.sum()),
               "nonzero_fraction": float((values != 0).float().mean()), "seconds": round(time.time() - started, 2)}
    metadata = {"format": FORMAT, "settings": json.dumps(settings.to_json()), "patient": patient_name,
                "fingerprint": fingerprint, "summary": json.dumps(summary), "vocab": vocab_record(tokenizer)}
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(tensors, out, metadata)
    partial.unlink(missing_ok=True)
    return summary


def load_rewards(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a rewards file; raises ValueError for anything that is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fastdoctor rewards file (format {metadata.get('format')!r})")
    try:
        metadata = {**metadata, "settings": json.loads(metadata["settings"]),
                    "summary": json.loads(metadata["summary"])}
    except (KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: damaged metadata ({type(error).__name__}: {error})") from None
    _check_rewards_tensors(path, tensors)
    return tensors, metadata


_REWARD_TENSORS = ("prompt_ids", "prompt_mask", *(f"{side}_{kind}" for side in ("chosen", "rejected")
                                                 for kind in ("ids", "mask", "rewards", "logp_pos", "logp_neg")))


def _check_rewards_tensors(path, tensors: dict[str, torch.Tensor]) -> None:
    """Whole or refused: every tensor present, one row count, matching widths per side, nothing non-finite
    (a NaN reward or log-prob would train a doctor on garbage without a sound)."""
    missing = [name for name in _REWARD_TENSORS if name not in tensors]
    if missing:
        raise ValueError(f"{path}: missing tensors {missing}")
    rows = {name: tensors[name].shape[0] if tensors[name].dim() else None for name in _REWARD_TENSORS}
    if len(set(rows.values())) != 1 or None in rows.values():
        raise ValueError(f"{path}: the tensors disagree in row count ({rows}); the file is damaged")
    for side in ("chosen", "rejected"):
        shape = tensors[f"{side}_ids"].shape
        for kind in ("mask", "rewards", "logp_pos", "logp_neg"):
            if tensors[f"{side}_{kind}"].shape != shape:
                raise ValueError(f"{path}: {side}_{kind} has shape {list(tensors[f'{side}_{kind}'].shape)}, "
                                 f"{side}_ids {list(shape)}")
        for kind in ("rewards", "logp_pos", "logp_neg"):
            values = tensors[f"{side}_{kind}"]
            bad = ~torch.isfinite(values) & tensors[f"{side}_mask"].bool()
            if bool(bad.any()):
                row = int(bad.any(dim=1).nonzero()[0])
                raise ValueError(f"{path}: {side}_{kind} holds NaN or inf (first in row {row})")
    if tensors["prompt_mask"].shape != tensors["prompt_ids"].shape:
        raise ValueError(f"{path}: prompt_mask and prompt_ids differ in shape")
