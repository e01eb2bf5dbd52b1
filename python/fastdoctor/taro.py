"""TARo (METHODS.md §3): the step-wise autoregressive reward model, the token-level router, and their training.

Stage 1, the reward model (§3.2). A copy of the patient (fluent from the start, decision 8) with LoRA adapters,
trained with GenARM's Bradley-Terry loss (genarm.arm_batch_loss) on Math-Step-DPO-style step pairs:

    context = chat_prompt(question) + initial_reason_steps      (the start of the assistant turn)
    y_w = the chosen next step, y_l = the rejected next step
    L = -log sigmoid(beta_r * [sum log pi_rm(y_w) - sum log pi_rm(y_l)])

It is saved as an ordinary HF folder (LoRA merged) plus taro_rm.json, so load_model and generate take it as any
other model.

Stage 2, the router (§3.3, decision 7). Per token, alpha_t = sigmoid(w2 . tanh(W1 h_t + b1) + b2), where h_t
holds the top-K (logit, token-id embedding) pairs of the base model, then of the reward model, in rank order
(reference.router_features defines the layout; the fused op routed_sampling_from_logits reads these very
weights). The routed next-token logits are z = (1 - alpha_t) z_base + alpha_t z_rm. Trained with both models
frozen, on the teacher-forced NLL of correct full solutions under softmax(z) over the full vocabulary, plus an
optional Bernoulli-entropy term on alpha. The two frozen models are run once: RouterCache keeps the top-64
features and the full logits (float16, memory-mapped .npy) of every solution token.

Fixed-alpha GenARM (the baseline): z_base + a' z_rm, i.e. generate(base, ids, doctors=[rm], alpha=1,
betas=[a']). It equals the convex mix with a = a' / (1 + a') at temperature T * (1 + a') (genarm_equivalent);
under greedy decoding temperatures do not matter.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import os
import pathlib
from collections.abc import Sequence

import torch
from torch import nn

from . import reference
from .doctor import pack_sequences, response_log_probs, run_lm, vocab_fingerprint
from .files import read_format_json, staged_directory
from .reasoning import Problem, StepPair, chat_prompt

RM_FORMAT = "fastdoctor.taro_rm/1"
ROUTER_FORMAT = "fastdoctor.taro_router/1"
CACHE_FORMAT = "fastdoctor.taro_router_cache/1"
MAX_TOP_K = reference.ROUTER_MAX_TOP_K  # the fused op's limit on K
CACHE_TOP_K = MAX_TOP_K  # the cache keeps this many features per model, so any router K <= 64 can train on it

# ---------------------------------------------------------------------------------------------- tokenising


def encode(tokenizer, text: str) -> torch.Tensor:
    """Token ids of `text` as int64 [n], no special tokens added (chat templates carry their own)."""
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.int64)


def step_context(tokenizer, pair: StepPair) -> str:
    """The reward model's context for a step pair: the chat prompt with the assistant turn opened, then the
    earlier steps (one per line), so the next step starts a new line."""
    steps = pair.initial_reason_steps.strip("\n")
    return chat_prompt(tokenizer, pair.prompt) + (steps + "\n" if steps else "")


@dataclasses.dataclass
class PairTokens:
    """One tokenised step pair, in the form arm_batch_loss takes (.prompt, .chosen, .rejected)."""

    prompt: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    level: int = 0
    error_type: str = ""


def step_pair_tokens(tokenizer, pairs: Sequence[StepPair]) -> list[PairTokens]:
    out = []
    for index, pair in enumerate(pairs):
        prompt, chosen, rejected = (encode(tokenizer, text) for text in
                                    (step_context(tokenizer, pair), pair.chosen, pair.rejected))
        if chosen.numel() == 0 or rejected.numel() == 0:
            raise ValueError(f"pairs[{index}]: the chosen or rejected step is empty")
        out.append(PairTokens(prompt, chosen, rejected, pair.level, pair.error_type))
    return out


def solution_tokens(tokenizer, problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt ids, response ids) of a problem's gold solution: the chat prompt, then the solution text and the
    end-of-turn token, exactly what greedy decoding would have to produce."""
    response = encode(tokenizer, problem.solution)
    if tokenizer.eos_token_id is not None:
        response = torch.cat([response, torch.tensor([tokenizer.eos_token_id])])
    return encode(tokenizer, chat_prompt(tokenizer, problem.question)), response


def _pad_id(tokenizer) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


# ---------------------------------------------------------------------------------------------- reward model


@torch.no_grad()
def pair_accuracy(lm: nn.Module, examples: Sequence[PairTokens], *, beta_r: float = 0.05, batch_size: int = 8,
                  pad_id: int = 0) -> dict:
    """Pair accuracy (the RM's reward of the chosen step beats the rejected one), mean margin and BT loss over
    `examples`, overall and per level and per error type."""
    device = next(lm.parameters()).device
    was_training = lm.training
    lm.eval()
    margins, losses = [], []
    try:
        for first in range(0, len(examples), batch_size):
            chunk = list(examples[first: first + batch_size])
            batch = pack_sequences([e.prompt for e in chunk] * 2, [e.chosen for e in chunk] + [e.rejected for e in chunk],
                                   pad_id).to(device)
            reward = response_log_probs(run_lm(lm, batch).logits, batch).sum(dim=1)
            margin = (reward[: len(chunk)] - reward[len(chunk):]).float().cpu()
            margins.append(margin)
            losses.append(-nn.functional.logsigmoid(beta_r * margin))
    finally:
        lm.train(was_training)
    margin = torch.cat(margins)
    right = margin > 0

    def group(key):
        out = {}
        for value in sorted({getattr(e, key) for e in examples}):
            mask = torch.tensor([getattr(e, key) == value for e in examples])
            out[str(value)] = round(float(right[mask].float().mean()), 4)
        return out

    return {"pairs": len(examples), "accuracy": round(float(right.float().mean()), 4),
            "margin": round(float(margin.mean()), 4), "loss": round(float(torch.cat(losses).mean()), 5),
            "by_level": group("level"), "by_error_type": group("error_type")}


def train_reward_model(patient: nn.Module, tokenizer, out: str | os.PathLike, *, pairs: Sequence[StepPair] | None = None,
                       eval_pairs: Sequence[StepPair] | None = None, config=None, beta_r: float = 0.05,
                       lora_rank: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.05, lora_layers: int = 0,
                       work: str | os.PathLike | None = None, resume: bool = True, eval_before: bool = True,
                       info: dict | None = None) -> dict:
    """Stage 1: trains the step-wise reward model and saves it to `out` (save_reward_model).

    The RM starts as a copy of `patient` (decision 8: fluent) with LoRA adapters (GenARM's r = 8, alpha = 16,
    dropout 0.05) on every decoder layer, or on the last `lora_layers` only (backpropagation then stops there:
    about 2.4x cheaper steps on SmolLM2-135M with 10 of 30 layers); only the adapters train, with train.train
    (AdamW, warmup + cosine, atomic resumable checkpoints in `work`, default <out>.train). pairs: default the
    bundled train split; eval_pairs: default the bundled test split, scored after training and, with
    eval_before, before (the untrained RM equals the patient). Returns a summary dict."""
    from . import train as train_lib
    from .doctor import attach_lora
    from .genarm import arm_batch_loss
    from .reasoning import load_step_pairs

    if not beta_r > 0:
        raise ValueError(f"beta_r: expected > 0, got {beta_r}")
    pairs = load_step_pairs("train") if pairs is None else list(pairs)
    eval_pairs = load_step_pairs("test") if eval_pairs is None else list(eval_pairs)
    config = config or train_lib.TrainConfig(steps=75, batch_size=8, lr=5e-4, warmup_steps=8, log_every=5,
                                             checkpoint_every=25)
    out = pathlib.Path(out)
    work = pathlib.Path(work) if work is not None else out.with_name(out.name + ".train")
    pad_id = _pad_id(tokenizer)
    examples = step_pair_tokens(tokenizer, pairs)
    held_out = step_pair_tokens(tokenizer, eval_pairs) if eval_pairs else []
    lm = copy.deepcopy(patient)
    for p in lm.parameters():
        p.requires_grad_(False)
    lm = _attach_top_lora(lm, lora_layers, lora_rank, lora_alpha, lora_dropout) if lora_layers else \
        attach_lora(lm, rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout)
    device = next(lm.parameters()).device
    before = pair_accuracy(lm, held_out, beta_r=beta_r, pad_id=pad_id) if held_out and eval_before else None
    loss = functools.partial(arm_batch_loss, lm, beta_r=beta_r, pad_id=pad_id, device=device)
    history = train_lib.train(lm, examples, loss, config, work, name="taro-rm", resume=resume)
    after = pair_accuracy(lm, held_out, beta_r=beta_r, pad_id=pad_id) if held_out else None
    summary = {"beta_r": beta_r, "lora": {"rank": lora_rank, "alpha": lora_alpha, "dropout": lora_dropout,
                                          "layers": lora_layers or "all"},
               "train_pairs": len(examples), "config": dataclasses.asdict(config),
               "final_train": history[-1] if history else None, "held_out_before": before, "held_out_after": after,
               **(info or {})}
    save_reward_model(lm.merge_and_unload(), out, tokenizer, info=summary)
    return summary


def _attach_top_lora(lm: nn.Module, layers: int, rank: int, alpha: int, dropout: float) -> nn.Module:
    """peft LoRA on the attention and MLP projections of the last `layers` decoder layers only."""
    from peft import LoraConfig, get_peft_model

    total = getattr(lm.config, "num_hidden_layers", None) or getattr(lm.config, "n_layer", None)
    if not isinstance(layers, int) or not total or not 1 <= layers <= total:
        raise ValueError(f"lora_layers: expected an int in [1, {total}] (0: every layer), got {layers!r}")
    names = {name.rsplit(".", 1)[-1] for name, module in lm.named_modules() if isinstance(module, nn.Linear)}
    wanted = [n for n in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj") if n in names]
    if not wanted:
        raise ValueError(f"lora_layers: only Llama/Qwen-style projections are supported, found none in "
                         f"{type(lm).__name__}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=wanted, task_type="CAUSAL_LM",
                        layers_to_transform=list(range(total - layers, total)))
    return get_peft_model(lm, config)


def save_reward_model(lm: nn.Module, path: str | os.PathLike, tokenizer=None, *, info: dict | None = None) -> pathlib.Path:
    """Writes the RM atomically: an HF folder (save_pretrained; merge LoRA first) with its tokenizer and
    taro_rm.json (format, vocabulary fingerprint, training summary)."""
    if hasattr(lm, "merge_and_unload"):
        lm = copy.deepcopy(lm).merge_and_unload()
    path = pathlib.Path(path)
    with staged_directory(path) as staging:
        lm.save_pretrained(staging, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        meta = {"format": RM_FORMAT, "vocab": vocab_fingerprint(tokenizer) if tokenizer is not None else None,
                "info": info or {}}
        (staging / "taro_rm.json").write_text(json.dumps(meta, indent=2))
    return path


def load_reward_model(path: str | os.PathLike, *, tokenizer=None, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu"):
    """(lm, tokenizer) of a saved RM. With `tokenizer` (the base model's), refuses an RM trained with another
    vocabulary."""
    from .models import load_model

    path = pathlib.Path(path)
    meta = read_format_json(path, "taro_rm.json", RM_FORMAT, "TARo reward model")
    if tokenizer is not None and meta.get("vocab") not in (None, vocab_fingerprint(tokenizer)):
        raise ValueError(f"{path}: the reward model was trained with another tokenizer than the base model's; "
                         "base and reward model must share a vocabulary")
    return load_model(path, dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------- router


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class Router(nn.Module):
    """The TARo token-level router (decision 7), laid out exactly as the fused op reads it:
    embedding nn.Embedding(V, d), hidden nn.Linear(2K(d+1), H), out nn.Linear(H, 1).

    alpha = sigmoid(out(tanh(hidden(h)))), with h the top-K (logit, embedding) pairs of the base then the reward
    model (reference.router_features). The output layer starts near zero and its bias at logit(init_alpha), so
    alpha starts close to init_alpha (0.5) everywhere; the hidden weights that read logits start scaled by
    logit_init_scale, so tanh is not saturated by raw logits before training."""

    def __init__(self, vocab_size: int, k: int = 20, embed_dim: int = 32, hidden: int = 128,
                 init_alpha: float = 0.5, logit_init_scale: float = 0.1):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("k", k), ("embed_dim", embed_dim), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if k > MAX_TOP_K:
            raise ValueError(f"k: expected K in [1, {MAX_TOP_K}] (the fused op's limit), got {k}")
        if k > vocab_size:
            raise ValueError(f"k: top-K of {k} candidates from a vocabulary of only {vocab_size} tokens; expected "
                             "K <= vocab_size")
        if not 0 < init_alpha < 1:
            raise ValueError(f"init_alpha: expected a value in (0, 1), got {init_alpha}")
        self.vocab_size, self.k, self.embed_dim, self.hidden_size = vocab_size, k, embed_dim, hidden
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.hidden = nn.Linear(2 * k * (embed_dim + 1), hidden)
        self.out = nn.Linear(hidden, 1)
        with torch.no_grad():
            # Raw logits (often 10-30) would saturate tanh from the start: their columns start 10x smaller.
            self.hidden.weight[:, self.logit_columns()] *= logit_init_scale
            self.out.weight.normal_(0.0, 0.01)
            self.out.bias.fill_(_logit(init_alpha))

    def logit_columns(self) -> torch.Tensor:
        """The columns of hidden.weight that read a candidate's logit (the others read its embedding)."""
        return torch.arange(2 * self.k) * (self.embed_dim + 1)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, k={self.k}, embed_dim={self.embed_dim}, hidden={self.hidden_size}"

    def config(self) -> dict:
        return {"vocab_size": self.vocab_size, "k": self.k, "embed_dim": self.embed_dim, "hidden": self.hidden_size}

    def _check_logits(self, base_logits: torch.Tensor, rm_logits: torch.Tensor) -> None:
        for name, z in (("base_logits", base_logits), ("rm_logits", rm_logits)):
            if z.dim() != 2:
                raise ValueError(f"{name}: expected shape [batch, vocab], got {list(z.shape)}")
        if base_logits.shape != rm_logits.shape:
            raise ValueError(f"base_logits, rm_logits: shapes differ ({list(base_logits.shape)} vs "
                             f"{list(rm_logits.shape)}); base and reward model must share a vocabulary")
        if base_logits.shape[1] != self.vocab_size:
            raise ValueError(f"base_logits: {base_logits.shape[1]} logits per row, but the router was built for a "
                             f"vocabulary of {self.vocab_size}")

    def alpha_from_top_k(self, base_values: torch.Tensor, base_ids: torch.Tensor, rm_values: torch.Tensor,
                         rm_ids: torch.Tensor) -> torch.Tensor:
        """alpha [N] from precomputed top-K features ([N, >= K] values and ids in rank order; the first K used).
        Differentiable in the router's parameters: the path router training takes."""
        k = self.k
        parts = []
        for values, ids in ((base_values, base_ids), (rm_values, rm_ids)):
            pairs = torch.cat([values[:, :k].float().unsqueeze(-1), self.embedding(ids[:, :k].long())], dim=-1)
            parts.append(pairs.flatten(1))
        return torch.sigmoid(self.out(torch.tanh(self.hidden(torch.cat(parts, dim=1))))).squeeze(-1)

    def alpha(self, base_logits: torch.Tensor, rm_logits: torch.Tensor) -> torch.Tensor:
        """alpha float32 [B] from the two models' logits [B, V] (ties in the top-K go to the lower token id,
        as in the kernels)."""
        self._check_logits(base_logits, rm_logits)
        base_values, base_ids = reference.router_top_k(base_logits, self.k)
        rm_values, rm_ids = reference.router_top_k(rm_logits, self.k)
        return self.alpha_from_top_k(base_values, base_ids, rm_values, rm_ids)

    def forward(self, base_logits: torch.Tensor, rm_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha [B], routed logits (1 - alpha) z_base + alpha z_rm [B, V]), float32."""
        alpha = self.alpha(base_logits, rm_logits)
        a = alpha.unsqueeze(-1)
        return alpha, (1 - a) * base_logits.float() + a * rm_logits.float()

    def gating_weights(self) -> dict[str, torch.Tensor]:
        """The parameters as routed_sampling_from_logits takes them (detached, float32)."""
        return {"embedding": self.embedding.weight.detach().float(), "w1": self.hidden.weight.detach().float(),
                "b1": self.hidden.bias.detach().float(), "w2": self.out.weight.detach().float(),
                "b2": self.out.bias.detach().float()}


def save_router(router: Router, path: str | os.PathLike, tokenizer=None, *, info: dict | None = None) -> pathlib.Path:
    """Writes <path>/router.safetensors and router.json (format, K, d, H, vocabulary size and fingerprint,
    `info`) atomically."""
    from safetensors.torch import save_file

    path = pathlib.Path(path)
    with staged_directory(path) as staging:
        save_file({k: v.detach().cpu().contiguous() for k, v in router.state_dict().items()},
                  str(staging / "router.safetensors"))
        meta = {"format": ROUTER_FORMAT, **router.config(),
                "vocab": vocab_fingerprint(tokenizer) if tokenizer is not None else None, "info": info or {}}
        (staging / "router.json").write_text(json.dumps(meta, indent=2))
    return path


def read_router_meta(path: str | os.PathLike) -> dict:
    return read_format_json(path, "router.json", ROUTER_FORMAT, "TARo router")


def load_router(path: str | os.PathLike, *, vocab_size: int | None = None, k: int | None = None, tokenizer=None,
                device: str | torch.device = "cpu") -> Router:
    """Loads a saved router. Raises ValueError when it was built for another vocabulary size (`vocab_size`),
    another top-K (`k`) or another tokenizer (`tokenizer`), or when its weights do not match router.json."""
    from safetensors.torch import load_file

    path = pathlib.Path(path)
    meta = read_router_meta(path)
    if vocab_size is not None and meta["vocab_size"] != vocab_size:
        raise ValueError(f"{path}: the router was built for a vocabulary of {meta['vocab_size']} tokens, but the "
                         f"models emit {vocab_size} logits; train a router for these models")
    if k is not None and meta["k"] != k:
        raise ValueError(f"{path}: the router was built for top-K = {meta['k']} features, not K = {k}")
    if tokenizer is not None and meta.get("vocab") not in (None, vocab_fingerprint(tokenizer)):
        raise ValueError(f"{path}: the router was trained with another tokenizer (vocabulary fingerprint differs); "
                         "its token embeddings would index the wrong tokens")
    router = Router(int(meta["vocab_size"]), k=int(meta["k"]), embed_dim=int(meta["embed_dim"]),
                    hidden=int(meta["hidden"]))
    try:
        state = load_file(str(path / "router.safetensors"))
    except Exception as error:  # safetensors raises its own types for corrupt files
        raise ValueError(f"{path}/router.safetensors: cannot read ({error})") from None
    expected = {name: tuple(t.shape) for name, t in router.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if found != expected:
        raise ValueError(f"{path}/router.safetensors: weights {found} do not match router.json (expected "
                         f"{expected})")
    router.load_state_dict(state)
    return router.to(device).eval()


# ---------------------------------------------------------------------------------------------- router data


def model_signature(model: nn.Module) -> str:
    """A cheap fingerprint of a model's weights (per-tensor float64 sums), so a cache built from other models
    is never reused."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.state_dict().items():
            digest.update(f"{name}:{tuple(p.shape)}:{float(p.double().sum()):.10e}".encode())
    return digest.hexdigest()[:16]


class RouterCache:
    """The frozen models' outputs on gold solutions, computed once.

    Per solution token (all problems concatenated, `offsets` [P + 1] delimiting each problem): the target id,
    the top-64 values and ids of the base and the reward model (float32 / int32, in rank order, ties to the lower
    id), and the full-vocabulary logits of both models as float16 memory-mapped .npy files [N, V]."""

    def __init__(self, path: str | os.PathLike):
        import numpy as np
        from safetensors.torch import load_file

        self.path = pathlib.Path(path)
        try:
            self.meta = json.loads((self.path / "cache.json").read_text())
            tensors = load_file(str(self.path / "top_k.safetensors"))
            self.base_logits = np.load(self.path / "base_logits.npy", mmap_mode="r", allow_pickle=False)
            self.rm_logits = np.load(self.path / "rm_logits.npy", mmap_mode="r", allow_pickle=False)
        except Exception as error:
            raise ValueError(f"{self.path}: not a readable router cache ({type(error).__name__}: {error})") from None
        if self.meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"{self.path}/cache.json: expected format {CACHE_FORMAT!r}")
        self.targets = tensors["targets"]
        self.offsets = tensors["offsets"]
        self.base_values, self.base_ids = tensors["base_values"], tensors["base_ids"]
        self.rm_values, self.rm_ids = tensors["rm_values"], tensors["rm_ids"]
        self.levels = tensors["levels"]
        self.vocab_size = int(self.meta["vocab_size"])
        self.top_k = int(self.meta["top_k"])

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    @property
    def tokens(self) -> int:
        return int(self.offsets[-1])

    def items(self) -> list["CacheItem"]:
        return [CacheItem(i, int(self.offsets[i]), int(self.offsets[i + 1]), int(self.levels[i]))
                for i in range(len(self))]

    def rows(self, items: Sequence["CacheItem"]) -> dict[str, torch.Tensor]:
        """The cached tensors of these problems' tokens, concatenated (logits as float32)."""
        import numpy as np

        spans = [slice(it.start, it.end) for it in items]

        def take(tensor):
            return torch.cat([tensor[s] for s in spans])

        def take_logits(array):
            return torch.from_numpy(np.concatenate([array[s] for s in spans])).float()

        return {"targets": take(self.targets).long(), "base_values": take(self.base_values),
                "base_ids": take(self.base_ids).long(), "rm_values": take(self.rm_values), "rm_ids": take(self.rm_ids).long(),
                "base_logits": take_logits(self.base_logits), "rm_logits": take_logits(self.rm_logits)}


@dataclasses.dataclass(frozen=True)
class CacheItem:
    index: int
    start: int
    end: int
    level: int


@torch.no_grad()
def build_router_cache(base: nn.Module, rm: nn.Module, tokenizer, problems: Sequence[Problem],
                       path: str | os.PathLike, *, batch_size: int = 8, progress: bool = True) -> RouterCache:
    """Runs the frozen base and reward model once over the gold solutions of `problems` and writes a RouterCache
    to `path` atomically. An existing cache made from the same models, tokenizer and problems is reused."""
    import numpy as np
    from safetensors.torch import save_file

    from .models import logits_width

    path = pathlib.Path(path)
    widths = logits_width(base), logits_width(rm)
    if widths[0] != widths[1]:
        raise ValueError(f"rm: emits {widths[1]} logits per token but the base model emits {widths[0]}; base and "
                         "reward model must share a vocabulary")
    vocab = widths[0]
    if not problems:
        raise ValueError("problems: expected at least one problem with a gold solution")
    key = {"format": CACHE_FORMAT, "vocab_size": vocab, "top_k": CACHE_TOP_K, "vocab": vocab_fingerprint(tokenizer),
           "base": model_signature(base), "rm": model_signature(rm),
           "problems": hashlib.sha256(json.dumps([p.to_json() for p in problems]).encode()).hexdigest()[:16]}
    if (path / "cache.json").is_file():
        try:
            old = json.loads((path / "cache.json").read_text())
            if {k: old.get(k) for k in key} == key:
                return RouterCache(path)
        except (json.JSONDecodeError, ValueError):
            pass
    sequences = [solution_tokens(tokenizer, p) for p in problems]
    lengths = [r.numel() for _, r in sequences]
    total = sum(lengths)
    device = next(base.parameters()).device
    pad_id = _pad_id(tokenizer)
    with staged_directory(path) as staging:
        arrays = {name: np.lib.format.open_memmap(staging / f"{name}_logits.npy", mode="w+", dtype=np.float16,
                                                  shape=(total, vocab)) for name in ("base", "rm")}
        top = {name: torch.empty(total, CACHE_TOP_K, dtype=dtype) for name, dtype in
               (("base_values", torch.float32), ("base_ids", torch.int32), ("rm_values", torch.float32),
                ("rm_ids", torch.int32))}
        targets = torch.empty(total, dtype=torch.int32)
        position = 0
        for first in range(0, len(sequences), batch_size):
            chunk = sequences[first: first + batch_size]
            batch = pack_sequences([p for p, _ in chunk], [r for _, r in chunk], pad_id).to(device)
            width = batch.response_ids.shape[1]
            outputs = {name: run_lm(model, batch).logits[:, :width].float() for name, model in
                       (("base", base), ("rm", rm))}
            mask = batch.response_mask
            count = int(mask.sum())
            rows = slice(position, position + count)
            targets[rows] = batch.response_ids[mask].to(torch.int32).cpu()
            for name, logits in outputs.items():
                flat = logits[mask]  # [count, V], problem by problem, token by token
                arrays[name][rows] = flat.cpu().to(torch.float16).numpy()
                values, ids = reference.router_top_k(flat, CACHE_TOP_K)
                top[f"{name}_values"][rows] = values.cpu()
                top[f"{name}_ids"][rows] = ids.to(torch.int32).cpu()
            position += count
            if progress:
                print(f"[taro-cache] {min(first + batch_size, len(sequences))}/{len(sequences)} problems, "
                      f"{position} tokens", flush=True)
        for array in arrays.values():
            array.flush()
        del arrays
        offsets = torch.tensor([0] + lengths).cumsum(0)
        levels = torch.tensor([p.level for p in problems], dtype=torch.int32)
        save_file({**top, "targets": targets, "offsets": offsets, "levels": levels}, str(staging / "top_k.safetensors"))
        (staging / "cache.json").write_text(json.dumps({**key, "tokens": total, "problem_ids": [p.id for p in problems]},
                                                       indent=1))
    return RouterCache(path)


def bernoulli_entropy(alpha: torch.Tensor) -> torch.Tensor:
    a = alpha.clamp(1e-6, 1 - 1e-6)
    return -(a * a.log() + (1 - a) * (1 - a).log())


def routed_nll(alpha: torch.Tensor, base_logits: torch.Tensor, rm_logits: torch.Tensor,
               targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL [N] of targets under softmax((1 - alpha) z_base + alpha z_rm), full vocabulary."""
    a = alpha.unsqueeze(-1)
    mixed = (1 - a) * base_logits + a * rm_logits
    return nn.functional.cross_entropy(mixed, targets, reduction="none")


def router_batch_loss(router: Router, cache: RouterCache, items: Sequence[CacheItem], *,
                      entropy_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Mean per-token routed NLL of the items' gold tokens + entropy_weight * mean Bernoulli entropy of alpha
    (a positive weight pushes alpha toward 0 or 1, a negative one toward 0.5). Metrics: the NLL, alpha's mean
    and spread, and for reference the NLL of the base and the reward model alone."""
    rows = cache.rows(items)
    device = router.out.weight.device
    rows = {k: v.to(device) for k, v in rows.items()}
    alpha = router.alpha_from_top_k(rows["base_values"], rows["base_ids"], rows["rm_values"], rows["rm_ids"])
    nll = routed_nll(alpha, rows["base_logits"], rows["rm_logits"], rows["targets"]).mean()
    entropy = bernoulli_entropy(alpha).mean()
    loss = nll + entropy_weight * entropy if entropy_weight else nll
    with torch.no_grad():
        base_nll = nn.functional.cross_entropy(rows["base_logits"], rows["targets"])
        rm_nll = nn.functional.cross_entropy(rows["rm_logits"], rows["targets"])
    return loss, {"nll": float(nll.detach()), "alpha_mean": float(alpha.detach().mean()),
                  "alpha_std": float(alpha.detach().std()) if alpha.numel() > 1 else 0.0,
                  "entropy": float(entropy.detach()), "nll_base": float(base_nll), "nll_rm": float(rm_nll),
                  "tokens": float(alpha.numel())}


def digit_token_ids(tokenizer) -> torch.Tensor:
    """The ids of tokens whose text holds a digit (the numbers of a solution)."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return torch.tensor([i for i, t in enumerate(tokens) if t is not None and any(c.isdigit() for c in t)],
                        dtype=torch.int64)


@torch.no_grad()
def evaluate_routing_nll(cache: RouterCache, *, router: Router | None = None,
                         fixed_alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), chunk: int = 16,
                         digit_ids: torch.Tensor | None = None) -> dict:
    """Teacher-forced on the cached gold solutions, under the router and under fixed convex mixes
    (1 - a) z_base + a z_rm (a = 0: base alone, a = 1: RM alone): per-token NLL ('nll') and greedy top-1 accuracy
    (argmax of the mixed logits = the gold token, 'top1'), overall and per level; with digit_ids, also both on
    the gold tokens that hold digits ('nll_digits', 'top1_digits')."""
    stats: dict[str, dict[str, dict[str, float]]] = {}  # variant -> group -> sums
    counts: dict[str, float] = {}
    alpha_sums: dict[str, float] = {}
    items = cache.items()

    def add(table, group, key, value):
        table.setdefault(group, {}).setdefault(key, 0.0)
        table[group][key] += value

    for first in range(0, len(items), chunk):
        part = items[first: first + chunk]
        rows = cache.rows(part)
        targets = rows["targets"]
        level = torch.cat([torch.full((it.end - it.start,), it.level) for it in part])
        groups = {"all": torch.ones_like(targets, dtype=torch.bool),
                  **{str(lv): level == lv for lv in level.unique().tolist()}}
        if digit_ids is not None:
            groups["digits"] = torch.isin(targets, digit_ids)
        variants = {f"fixed a={a:g}": torch.full_like(targets, a, dtype=torch.float32) for a in fixed_alphas}
        if router is not None:
            variants["router"] = router.alpha_from_top_k(rows["base_values"], rows["base_ids"], rows["rm_values"],
                                                         rows["rm_ids"])
        for name, alpha in variants.items():
            a = alpha.unsqueeze(-1)
            mixed = (1 - a) * rows["base_logits"] + a * rows["rm_logits"]
            nll = nn.functional.cross_entropy(mixed, targets, reduction="none")
            top1 = (mixed.argmax(-1) == targets).float()
            table = stats.setdefault(name, {})
            for group, mask in groups.items():
                add(table, group, "nll", float(nll[mask].sum()))
                add(table, group, "top1", float(top1[mask].sum()))
        for group, mask in groups.items():
            counts[group] = counts.get(group, 0) + int(mask.sum())
            if router is not None:
                alpha_sums[group] = alpha_sums.get(group, 0.0) + float(variants["router"][mask].sum())
    order = ["all"] + sorted(g for g in counts if g not in ("all", "digits"))
    result = {"tokens": int(counts["all"]),
              "nll": {v: {g: round(t[g]["nll"] / counts[g], 4) for g in order} for v, t in stats.items()},
              "top1": {v: {g: round(t[g]["top1"] / counts[g], 4) for g in order} for v, t in stats.items()}}
    if digit_ids is not None and counts.get("digits"):
        result["digit_tokens"] = int(counts["digits"])
        result["nll_digits"] = {v: round(t["digits"]["nll"] / counts["digits"], 4) for v, t in stats.items()}
        result["top1_digits"] = {v: round(t["digits"]["top1"] / counts["digits"], 4) for v, t in stats.items()}
    if router is not None:
        result["router_alpha_mean"] = {g: round(alpha_sums[g] / counts[g], 4) for g in order + (
            ["digits"] if "digits" in counts and counts["digits"] else [])}
    return result


def train_router(cache: RouterCache, out: str | os.PathLike, *, router: Router | None = None, k: int = 20,
                 embed_dim: int = 32, hidden: int = 128, init_alpha: float = 0.5, entropy_weight: float = 0.0,
                 config=None, tokenizer=None, work: str | os.PathLike | None = None, resume: bool = True,
                 eval_cache: RouterCache | None = None, info: dict | None = None) -> dict:
    """Stage 2: trains a Router on a RouterCache (the frozen models' outputs) and saves it to `out`.

    One example is one problem's gold solution; config.batch_size problems per optimizer step (AdamW, warmup +
    cosine, atomic resumable checkpoints in `work`, default <out>.train). With eval_cache, reports the held-out
    per-token NLL under the router and fixed mixes. Returns a summary dict."""
    from . import train as train_lib

    if k > cache.top_k:
        raise ValueError(f"k: the cache holds top-{cache.top_k} features, fewer than K = {k}")
    router = router or Router(cache.vocab_size, k=k, embed_dim=embed_dim, hidden=hidden, init_alpha=init_alpha)
    if router.vocab_size != cache.vocab_size:
        raise ValueError(f"router: built for a vocabulary of {router.vocab_size}, the cache holds "
                         f"{cache.vocab_size}-wide logits")
    if tokenizer is not None and cache.meta.get("vocab") != vocab_fingerprint(tokenizer):
        raise ValueError(f"{cache.path}: the cache was built with another tokenizer")
    config = config or train_lib.TrainConfig(steps=150, batch_size=8, lr=2e-3, warmup_steps=10, log_every=10,
                                             checkpoint_every=50, weight_decay=0.0)
    out = pathlib.Path(out)
    work = pathlib.Path(work) if work is not None else out.with_name(out.name + ".train")
    digits = digit_token_ids(tokenizer) if tokenizer is not None else None
    before = evaluate_routing_nll(eval_cache, router=router, digit_ids=digits) if eval_cache is not None else None
    loss = functools.partial(router_batch_loss, router, cache, entropy_weight=entropy_weight)
    history = train_lib.train(router, cache.items(), loss, config, work, name="taro-router", resume=resume)
    after = evaluate_routing_nll(eval_cache, router=router, digit_ids=digits) if eval_cache is not None else None
    summary = {"entropy_weight": entropy_weight, "config": dataclasses.asdict(config), "train_problems": len(cache),
               "train_tokens": cache.tokens, "final_train": history[-1] if history else None,
               "held_out_before": before, "held_out_after": after, **(info or {})}
    save_router(router, out, tokenizer, info=summary)
    return summary


# ---------------------------------------------------------------------------------------------- GenARM baseline


def genarm_equivalent(convex_alpha: float, temperature: float = 1.0) -> tuple[float, float]:
    """The GenARM form z_base + a' z_rm that samples exactly like TARo's convex mix (1 - a) z_base + a z_rm at
    `temperature`: returns (a', matched temperature) = (a / (1 - a), temperature / (1 - a)) (METHODS.md §3.3).
    Under greedy decoding (temperature 0) only a' matters."""
    if not 0 <= convex_alpha < 1:
        raise ValueError(f"convex_alpha: expected a value in [0, 1), got {convex_alpha}")
    return convex_alpha / (1 - convex_alpha), temperature / (1 - convex_alpha)


def convex_equivalent(genarm_alpha: float, temperature: float = 1.0) -> tuple[float, float]:
    """The inverse of genarm_equivalent: (a = a' / (1 + a'), temperature / (1 + a'))."""
    if not genarm_alpha >= 0:
        raise ValueError(f"genarm_alpha: expected >= 0, got {genarm_alpha}")
    return genarm_alpha / (1 + genarm_alpha), temperature / (1 + genarm_alpha)
