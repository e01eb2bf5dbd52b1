"""fastdoctor.generate: the KV-cache-aware multi-model decode loop.

The models run in lanes, each with its own KV cache: the patient stacked with every LoRA adapter doctor of it
(fastdoctor.shared_base: one forward over [patient; doctor 1; ...] x B rows), and one lane per separate
doctor. The prompt is prefilled once per lane, computing logits for the last position only. Each step runs
one forward per lane on the new token only, then one call of the steering object (fastdoctor.steering),
which runs one fused op: mix-and-sample with fixed or hooked weights, or TARo's router gating. A row that
emits EOS is padded from then on, and its caches are never rebuilt. On a GPU the loop never waits on the
device except every `eos_check_interval` steps.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence

import torch

from . import ops, shared_base
from .compiled import GATE, STATIC_CACHE_BUCKET, decode_step
from .kv_cache import cache_kwargs, output_cache
from .models import logits_width
from .sampling import RowSampling
from .steering import FixedWeights, Steering, as_steering

def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _check_models(patient, doctors: Sequence, separate: Sequence[int], device: torch.device,
                  vocab_size: int | None) -> int:
    """The vocabulary the mix samples from. Stacked doctors emit the patient's logits width by construction;
    separate ones must match it and sit on the patient's device."""
    widths = [logits_width(patient)] + [logits_width(d) if i in separate else logits_width(patient)
                                         for i, d in enumerate(doctors)]
    for i in separate:
        if _device_of(doctors[i]) != device:
            raise ValueError(f"doctors[{i}]: on {_device_of(doctors[i])}, but the patient is on {device}; "
                             "put every model on one device")
    if vocab_size is not None:
        if not _is_int(vocab_size) or not 0 < vocab_size <= min(widths):
            raise ValueError(f"vocab_size: expected 1..{min(widths)} (the smallest logits width), got {vocab_size}")
        return vocab_size
    for i, width in enumerate(widths[1:]):
        if width != widths[0]:
            raise ValueError(f"doctors[{i}]: emits {width} logits per token but the patient emits {widths[0]}; "
                             "patient and doctors must share a vocabulary (pass vocab_size= only for padded "
                             "vocabularies of the same tokenizer)")
    return widths[0]


def _check_doctor_list(doctors) -> list:
    if isinstance(doctors, torch.nn.Module) or not isinstance(doctors, (list, tuple)):
        raise TypeError(f"doctors: expected a list of doctors (AdapterDoctors or HF causal LMs), got "
                        f"{type(doctors).__name__}")
    return list(doctors)


def _row_seeds(seed, generator: torch.Generator | None, batch: int, device: torch.device) -> torch.Tensor:
    """Per-row Philox seeds: a per-row sequence/tensor as given, an int s as s + row, else drawn from
    `generator` (or torch's default generator, so torch.manual_seed makes runs repeatable)."""
    if seed is None:
        drawn = torch.randint(-(2**62), 2**62, (batch,), generator=generator, dtype=torch.int64)
        return drawn.to(device)
    if _is_int(seed):
        if not -(2**63) <= seed <= 2**63 - batch:
            raise ValueError(f"seed: expected an int64 (row r uses seed + r), got {seed}")
        return torch.arange(batch, dtype=torch.int64, device=device) + seed
    return ops.as_row_tensor(seed, "seed", batch, torch.int64, device)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int to Python, not to us


def _special_ids(eos_token_id, pad_token_id, vocab: int) -> tuple[list[int], int]:
    """(EOS ids, pad id), checked to be token ids of this vocabulary."""
    if eos_token_id is None:
        eos_ids = []
    elif _is_int(eos_token_id):
        eos_ids = [eos_token_id]
    elif isinstance(eos_token_id, (list, tuple)) and all(_is_int(e) for e in eos_token_id):
        eos_ids = list(eos_token_id)
    else:
        raise TypeError(f"eos_token_id: expected an int or a list of ints, got {eos_token_id!r}")
    if pad_token_id is not None and not _is_int(pad_token_id):
        raise TypeError(f"pad_token_id: expected an int, got {pad_token_id!r}")
    for name, ids in (("eos_token_id", eos_ids), ("pad_token_id", [] if pad_token_id is None else [pad_token_id])):
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise ValueError(f"{name}: {bad} outside the vocabulary [0, {vocab})")
    pad = pad_token_id if pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    return eos_ids, pad


def _check_prompt(input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, models) -> None:
    """Left padding only, no empty row, ids inside the embedding table, and room for every new position."""
    if bool(((attention_mask != 0) & (attention_mask != 1)).any()):
        raise ValueError("attention_mask: expected 0 (padding) and 1 (token) only")
    lengths = attention_mask.sum(dim=1)
    if bool((lengths == 0).any()):
        rows = (lengths == 0).nonzero().flatten().tolist()
        raise ValueError(f"attention_mask: rows {rows} are all padding; every prompt needs a token")
    if bool((attention_mask[:, 1:] < attention_mask[:, :-1]).any()):
        rows = (attention_mask[:, 1:] < attention_mask[:, :-1]).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"attention_mask: rows {rows} are right-padded; generate continues after the last column, "
                         "so pad prompts on the left (tokenizer.padding_side = 'left')")
    embeddings = models[0].get_input_embeddings()
    if embeddings is not None and hasattr(embeddings, "num_embeddings"):
        real = input_ids[attention_mask == 1]
        if bool(((real < 0) | (real >= embeddings.num_embeddings)).any()):
            raise ValueError(f"input_ids: token ids outside the patient's embedding table [0, "
                             f"{embeddings.num_embeddings})")
    needed = int(lengths.max()) + max_new_tokens
    for index, model in enumerate(models):
        limit = next((getattr(model.config, n) for n in ("max_position_embeddings", "n_positions")
                      if getattr(model.config, n, None)), None)
        if limit is not None and needed > limit:
            who = "the patient" if index == 0 else f"doctors[{index - 1}]"
            raise ValueError(f"max_new_tokens: the longest prompt ({int(lengths.max())} tokens) plus "
                             f"{max_new_tokens} new tokens needs {needed} positions, more than {who}'s {limit}")


def _new_cache(model, static_length: int | None):
    if static_length is None:
        return None  # the model creates a DynamicCache at prefill
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=static_length)


class _Lane:
    """One forward per step for the models at `slots` of the logits list: a single model (one slot), or the
    patient stacked with its adapter doctors (shared_base: `repeat` segments of B rows, one slot each)."""

    def __init__(self, model, slots: list[int], compiled: bool):
        self.model, self.slots, self.repeat = model, slots, len(slots)
        self.forward = decode_step(model, compiled)
        self.cache = None

    def _stack(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.repeat == 1 else tensor.repeat(self.repeat, 1)

    def _scatter(self, out, logits: list) -> None:
        self.cache = output_cache(out)
        for slot, part in zip(self.slots, out.logits[:, -1, :].chunk(self.repeat, dim=0)):
            logits[slot] = part

    def prefill(self, input_ids, attention_mask, position_ids, logits: list) -> None:
        # The last position as an index tensor, not logits_to_keep=1: HF then gathers a contiguous hidden state.
        # Its slice of [B, L, H] is not contiguous, and torch 2.13's CPU F.linear of such an input with a frozen
        # weight expands the LM head to [B, H, V] (1 s instead of 4 ms for a bf16 prefill of 16 rows).
        last = torch.tensor([input_ids.shape[1] - 1], device=input_ids.device)
        with GATE.eager():  # the prefill is eager in either mode (compiled: see fastdoctor.compiled)
            out = self.model(input_ids=self._stack(input_ids), attention_mask=self._stack(attention_mask),
                             position_ids=self._stack(position_ids), **cache_kwargs(self.model, self.cache),
                             use_cache=True, logits_to_keep=last)
        self._scatter(out, logits)

    def decode(self, tokens, attention_mask, position_ids, logits: list) -> None:
        out = self.forward(input_ids=self._stack(tokens), attention_mask=self._stack(attention_mask),
                           position_ids=self._stack(position_ids), **cache_kwargs(self.model, self.cache),
                           use_cache=True)
        self._scatter(out, logits)


@contextlib.contextmanager
def _lanes(patient, doctors: list, plan: shared_base.Plan, compiled: bool):
    """The patient and its stacked doctors in one lane (a stacked copy lent by shared_base for this call);
    each separate doctor in a lane of its own."""
    with contextlib.ExitStack() as stack:
        if plan.adapters:
            model = stack.enter_context(shared_base.stacked(patient, plan.adapters, compiled))
            lanes = [_Lane(model, [0] + [i + 1 for i in plan.stacked], compiled)]
        else:
            lanes = [_Lane(patient, [0], compiled)]
        yield lanes + [_Lane(doctors[i], [i + 1], compiled) for i in plan.separate]


@torch.inference_mode()
def generate(
    patient,
    input_ids: torch.Tensor,
    *,
    doctors: Sequence = (),
    alpha: ops.RowParam = 1.0,
    betas: Sequence[ops.RowParam] | None = None,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    temperature: ops.RowParam = 1.0,
    top_k: ops.RowParam = 0,
    top_p: ops.RowParam = 1.0,
    seed: int | Sequence[int] | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    streamer=None,
    router: Steering | Callable[[list[torch.Tensor]], torch.Tensor] | None = None,
    vocab_size: int | None = None,
    eos_check_interval: int | None = None,
    compile: bool = False,
) -> torch.Tensor:
    """Sample from p_patient^alpha * prod_i p_doctor_i^beta_i, token by token, with per-model KV caches.

    Args:
      patient: an HF causal LM (Llama, Qwen2, GPT-2, ...).
      doctors: AdapterDoctors of the patient (fastdoctor.load_doctor) and HF causal LMs sharing its vocabulary,
        on its device. shared_base.plan decides which run inside the patient's forward (every AdapterDoctor,
        and peft LoRA models of the patient's base weights); the others run as separate models.
      input_ids: LongTensor [B, L], left-padded when rows differ in length (give attention_mask then).
      alpha, betas: the patient's weight and one weight per doctor (default 1.0 each); each a scalar or
        per-row, so one batch can serve requests with different preference strengths.
      temperature, top_k, top_p: per-row or scalar; temperature 0 is greedy; see mixed_sampling_from_logits.
      seed: per-row seeds (a row then draws the same tokens alone or in any batch), or an int s (row r uses
        s + r), or None to draw seeds from `generator` / torch's default generator.
      eos_token_id, pad_token_id: a row stops at any EOS id; later positions hold pad_token_id (default:
        the first EOS id).
      streamer: HF streamer protocol: put(prompt), then put(step_tokens [B]) each step, then end().
      router: per-token steering instead of fixed alpha/betas: a steering object (fastdoctor.steering; e.g.
        fastdoctor.taro.RoutedSteering(router) with doctors=[reward_model]), or a weights hook
        hook(logits) -> [B, 1 + len(doctors)] (wrapped in steering.WeightsHook). Its `trace` then holds one
        entry per returned new token (entries after a row's EOS are meaningless).
      eos_check_interval: steps between checks that every row has finished (the check waits on the
        device); default 1 on the CPU, 8 on GPUs.
      compile: static KV caches and a torch.compile'd decode step per model (compiled once per model and
        shape; the first call pays the compilation, tens of seconds on a CPU). Treats weights as frozen.
        Compiled steps run one at a time, never beside another forward (fastdoctor.compiled).

    Returns:
      LongTensor [B, L + new], the prompt followed by the new tokens (fewer than max_new_tokens when every
      row finished early), like HF's generate.
    """
    run = _setup(patient, input_ids, _check_doctor_list(doctors), attention_mask=attention_mask, alpha=alpha,
                 betas=betas, router=router, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                 top_p=top_p, seed=seed, generator=generator, eos_token_id=eos_token_id,
                 pad_token_id=pad_token_id, vocab_size=vocab_size, eos_check_interval=eos_check_interval)
    if streamer is not None:
        if not (callable(getattr(streamer, "put", None)) and callable(getattr(streamer, "end", None))):
            raise TypeError(f"streamer: expected an HF streamer (with put() and end()), got {type(streamer).__name__}")
        streamer.put(input_ids.cpu())
    with _lanes(patient, run.doctors, run.plan, compile) as lanes:
        state = _prefill(lanes, run, input_ids, compile)
        new_tokens = _decode(lanes, run, state, streamer, compile)
    if streamer is not None:
        streamer.end()
    run.steering.trace[len(new_tokens):] = []
    if not new_tokens:
        return input_ids.clone()
    return torch.cat([input_ids, torch.stack(new_tokens, dim=1)], dim=1)


@dataclasses.dataclass
class _Run:
    """What one generate call decided before its first forward: checked inputs and per-row settings."""

    doctors: list
    plan: shared_base.Plan
    attention_mask: torch.Tensor
    max_new_tokens: int
    sampling: RowSampling
    steering: Steering
    eos_ids: list[int]
    pad: int
    interval: int  # steps between checks that wait on the device


def _setup(patient, input_ids, doctors: list, *, attention_mask, alpha, betas, router, max_new_tokens, temperature,
           top_k, top_p, seed, generator, eos_token_id, pad_token_id, vocab_size, eos_check_interval) -> _Run:
    """Every check of generate's arguments, in one pass, before any forward."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids: expected a LongTensor [batch, length], got {type(input_ids).__name__}")
    if input_ids.dtype != torch.int64:
        raise TypeError(f"input_ids: expected dtype torch.int64, got {input_ids.dtype}")
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids: expected a non-empty prompt of shape [batch, length], got "
                         f"{list(input_ids.shape)}")
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    device = _device_of(patient)
    if input_ids.device != device:
        raise ValueError(f"input_ids: on {input_ids.device}, but the patient is on {device}")
    plan = shared_base.plan(patient, doctors)
    vocab = _check_models(patient, doctors, plan.separate, device, vocab_size)
    batch = input_ids.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    elif not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape or \
            attention_mask.device != device:
        got = (f"shape {list(attention_mask.shape)} on {attention_mask.device}"
               if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__)
        raise ValueError(f"attention_mask: expected a tensor of shape {list(input_ids.shape)} on {device}, got {got}")
    _check_prompt(input_ids, attention_mask, max_new_tokens, [patient, *(doctors[i] for i in plan.separate)])
    weights = _weights(alpha, betas, router, len(doctors), batch, device)
    seeds = _row_seeds(seed, generator, batch, device)
    group = shared_base.tensor_parallel_group(patient)
    if group is not None and seed is None:  # drawn from each rank's own generator: every rank takes rank 0's
        torch.distributed.broadcast(seeds, group=group, group_src=0)
    sampling = RowSampling.of(batch, device, temperature=temperature, top_k=top_k, top_p=top_p, seed=seeds,
                              vocab_size=vocab, weights=weights)
    steering = as_steering(router) if router is not None else FixedWeights(weights)
    steering.trace.clear()
    eos_ids, pad = _special_ids(eos_token_id, pad_token_id, vocab)
    if eos_check_interval is not None and (not _is_int(eos_check_interval) or eos_check_interval < 1):
        raise ValueError(f"eos_check_interval: expected an int >= 1, got {eos_check_interval!r}")
    interval = eos_check_interval or (1 if device.type == "cpu" else 8)
    return _Run(doctors, plan, attention_mask, max_new_tokens, sampling, steering, eos_ids, pad, interval)


def _weights(alpha, betas, router, doctors: int, batch: int, device: torch.device) -> torch.Tensor:
    """The per-row mixing weights [B, 1 + doctors] (alpha, then betas), finite; none may be set with a router."""
    if router is not None and (betas is not None or not (isinstance(alpha, (int, float)) and alpha == 1.0)):
        raise ValueError("router: it chooses the weights of every token, so alpha and betas would be ignored; "
                         "leave alpha and betas at their defaults when giving a router")
    if betas is None:
        betas = [1.0] * doctors
    if len(betas) != doctors:
        raise ValueError(f"betas: expected one weight per doctor ({doctors}), got {len(betas)}")
    names = ["alpha", *[f"betas[{i}]" for i in range(len(betas))]]
    weights = torch.stack([ops.as_row_tensor(w, name, batch, torch.float32, device)
                           for w, name in zip([alpha, *betas], names)], dim=1)
    bad = [name for name, ok in zip(names, torch.isfinite(weights).all(dim=0).tolist()) if not ok]
    if bad:
        raise ValueError(f"{bad[0]}: expected finite mixing weights, got NaN or inf")
    return weights


@dataclasses.dataclass
class _State:
    """The decode loop's moving parts: the step's logits, the attention mask filled in as tokens arrive, the
    next positions."""

    logits: list
    full_mask: torch.Tensor
    next_position: torch.Tensor
    prompt_length: int


def _prefill(lanes: list[_Lane], run: _Run, input_ids: torch.Tensor, compile: bool) -> _State:
    """Caches for every lane, then one prefill per lane (logits of the last position only)."""
    batch, prompt_length = input_ids.shape
    needed = prompt_length + run.max_new_tokens
    static_length = -(-needed // STATIC_CACHE_BUCKET) * STATIC_CACHE_BUCKET if compile else None
    for lane in lanes:
        lane.cache = _new_cache(lane.model, static_length)
    # One attention mask for the whole run, filled in as tokens arrive: the dynamic path attends to the
    # filled prefix, the static path to the full (static-shape) width with zeros for future positions.
    full_mask = torch.zeros(batch, static_length or needed, dtype=torch.int64, device=input_ids.device)
    full_mask[:, :prompt_length] = run.attention_mask
    positions = (full_mask[:, :prompt_length].cumsum(-1) - 1).masked_fill_(run.attention_mask == 0, 1)  # HF's rule
    logits: list[torch.Tensor] = [None] * (1 + len(run.doctors))
    for lane in lanes:
        lane.prefill(input_ids, full_mask[:, :prompt_length], positions, logits)
    return _State(logits, full_mask, positions[:, -1:] + 1, prompt_length)


def _decode(lanes: list[_Lane], run: _Run, state: _State, streamer, compile: bool) -> list[torch.Tensor]:
    """The loop: sample a step from every lane's logits, pad finished rows, forward the new token. Returns the
    new tokens per step, without trailing steps in which every row had already finished."""
    device = state.full_mask.device
    batch = state.full_mask.shape[0]
    eos_t = torch.tensor(run.eos_ids, dtype=torch.int64, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    invalid = torch.zeros(batch, dtype=torch.bool, device=device)
    new_tokens: list[torch.Tensor] = []
    all_finished: list[torch.Tensor] = []  # per step, on the device: trims trailing all-pad steps at the end
    for index in range(run.max_new_tokens):
        tokens = run.steering.sample_step(state.logits, run.sampling)
        invalid |= tokens < 0
        tokens = tokens.clamp_min(0)  # a -1 (invalid logits) must not reach an embedding lookup
        if run.eos_ids:
            tokens = torch.where(finished, run.pad, tokens)
            finished |= torch.isin(tokens, eos_t)
            all_finished.append(finished.all())
        new_tokens.append(tokens)
        if streamer is not None:
            streamer.put(tokens.cpu())
        last = index + 1 == run.max_new_tokens
        if last or (index + 1) % run.interval == 0:
            if bool(invalid.any()):
                rows = invalid.nonzero().flatten().tolist()
                raise ValueError(f"generate: the mixed logits of rows {rows} held NaN or +inf at step {index}")
            if last or (run.eos_ids and bool(finished.all())):
                break
        run.sampling.step.add_(1)  # the rows' Philox counter
        state.full_mask[:, state.prompt_length + index] = 1
        mask = state.full_mask if compile else state.full_mask[:, : state.prompt_length + index + 1]
        for lane in lanes:
            lane.decode(tokens.unsqueeze(1), mask, state.next_position, state.logits)
        state.next_position = state.next_position + 1
    if all_finished:  # between EOS checks every row may have finished a few steps early: drop those steps
        done = torch.stack(all_finished).nonzero()
        if done.numel():
            new_tokens = new_tokens[: int(done[0, 0]) + 1]
    return new_tokens
