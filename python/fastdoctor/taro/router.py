"""TARo stage 2 (METHODS.md §3.3, decision 7): the token-level router, its files, and its steering.

Per token, alpha_t = sigmoid(w2 . tanh(W1 h_t + b1) + b2), where h_t holds the top-K (logit, token-id
embedding) pairs of the base model, then of the reward model, in rank order (reference.router_features
defines the layout; the fused op routed_sampling_from_logits reads these very weights). The routed
next-token logits are z = (1 - alpha_t) z_base + alpha_t z_rm (convex_mix).

Fixed-alpha GenARM (the baseline): z_base + a' z_rm, i.e. generate(base, ids, doctors=[rm], alpha=1,
betas=[a']). It equals the convex mix with a = a' / (1 + a') at temperature T * (1 + a') (genarm_equivalent);
under greedy decoding temperatures do not matter.
"""
from __future__ import annotations

import json
import math
import os
import pathlib

import torch
from torch import nn

from .. import ops, tokens
from ..ranking import router_top_k
from ..files import first_non_finite, read_format_json, staged_directory
from ..sampling import RowSampling

ROUTER_FORMAT = "fastdoctor.taro_router/1"


def convex_mix(alpha: torch.Tensor, base_logits: torch.Tensor, rm_logits: torch.Tensor) -> torch.Tensor:
    """The routed logits (1 - alpha) z_base + alpha z_rm, alpha [N] per row of the [N, V] logits."""
    a = alpha.unsqueeze(-1)
    return (1 - a) * base_logits + a * rm_logits



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
        if k > ops.MAX_ROUTER_TOP_K:
            raise ValueError(f"k: expected K in [1, {ops.MAX_ROUTER_TOP_K}] (the fused op's limit), got {k}")
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
        base_values, base_ids = router_top_k(base_logits, self.k)
        rm_values, rm_ids = router_top_k(rm_logits, self.k)
        return self.alpha_from_top_k(base_values, base_ids, rm_values, rm_ids)

    def forward(self, base_logits: torch.Tensor, rm_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha [B], routed logits (1 - alpha) z_base + alpha z_rm [B, V]), float32."""
        alpha = self.alpha(base_logits, rm_logits)
        return alpha, convex_mix(alpha, base_logits.float(), rm_logits.float())

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
                "vocab": tokens.vocab_record(tokenizer), "info": info or {}}
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
    tokens.check_vocab(meta.get("vocab"), tokenizer, path, "the router was trained")
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



class RoutedSteering:
    """generate's steering for a TARo router (fastdoctor.steering.Steering): each step, the fused
    routed_sampling_from_logits op routes, mixes (1 - a_t) z_patient + a_t z_rm, filters and samples.

        steering = RoutedSteering(router)
        generate(patient, ids, doctors=[rm], router=steering)
        steering.trace  # one alpha [B] (float32) per returned new token

    Entries after a row's EOS are meaningless."""

    def __init__(self, router: Router):
        if not isinstance(router, Router):
            raise TypeError(f"router: expected a fastdoctor.taro.Router, got {type(router).__name__}")
        bad = first_non_finite(router.named_parameters())
        if bad is not None:  # otherwise it surfaces per token as invalid mixed logits, naming nothing
            raise ValueError(f"router: its parameter {bad} holds NaN or inf")
        self.router = router
        self.gating = ops.gating_layout(router.gating_weights())
        self.trace: list[torch.Tensor] = []

    def sample_step(self, logits: list[torch.Tensor], sampling: RowSampling) -> torch.Tensor:
        if len(logits) != 2:
            raise ValueError(f"router: a TARo Router mixes the patient with exactly one reward model (doctors=[rm]), "
                             f"got {len(logits) - 1} doctors")
        if self.router.vocab_size != sampling.vocab_size:
            raise ValueError(f"router: built for a vocabulary of {self.router.vocab_size} tokens, but the models "
                             f"emit {sampling.vocab_size} logits per token")
        device = self.gating["w1"].device
        if device != logits[0].device:
            raise ValueError(f"router: its parameters are on {device}, but the patient is on {logits[0].device}")
        tokens, _, alpha = ops.routed_step(logits[0], logits[1], self.gating, self.router.k, sampling)
        self.trace.append(alpha)
        return tokens


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
