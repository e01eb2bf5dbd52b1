"""Shared test helpers and fixtures (test modules import helpers from here, never from each other):
per-row parameters and the op-vs-oracle runners, the exact-distribution check for samplers, random router
parameters, tiny random HF models built from configs (nothing is downloaded), a synthetic preference task,
and the CLI's tiny model folders."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import fastdoctor
from fastdoctor import ops, reference

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


def row_params(batch: int, *, temperature=1.0, top_k=0, top_p=1.0, seed=0, step=0, device="cpu") -> dict:
    """Per-row parameter tensors in the dtypes the op takes; scalars are broadcast."""

    def full(value, dtype):
        if isinstance(value, torch.Tensor):
            return value.to(device=device, dtype=dtype)
        return torch.full((batch,), value, dtype=dtype, device=device)

    return {
        "temperature": full(temperature, torch.float32),
        "top_k": full(top_k, torch.int64),
        "top_p": full(top_p, torch.float32),
        "seed": full(seed, torch.int64),
        "step": full(step, torch.int64),
    }


def run_kernel_and_reference(logits, weights, params, vocab_size=None):
    """(kernel tokens, kernel logprobs, reference tokens, reference logprobs), all on the CPU."""
    tokens, logprobs = fastdoctor.mixed_sampling_from_logits(logits, weights, vocab_size=vocab_size, **params)
    cpu_logits = [z.cpu() for z in logits]
    cpu_params = {k: v.cpu() for k, v in params.items()}
    ref_tokens, ref_logprobs = reference.mixed_sampling_from_logits(
        cpu_logits, weights.cpu(), cpu_params["temperature"], cpu_params["top_k"], cpu_params["top_p"],
        cpu_params["seed"], cpu_params["step"], vocab_size)
    return tokens.cpu(), logprobs.cpu(), ref_tokens, ref_logprobs


def random_logits(batch: int, vocab: int, dtype: torch.dtype, generator: torch.Generator, scale: float = 3.0,
                  device: str = "cpu") -> torch.Tensor:
    return (torch.randn(batch, vocab, generator=generator) * scale).to(dtype).to(device)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def cuda_available() -> bool:
    return torch.cuda.is_available()


# --- mix-and-sample: sizes and per-row parameters ---

# (vocab, batch, dtypes of the K inputs): odd sizes, real vocabularies, every dtype, mixed dtypes.
SHAPES = [
    (1, 3, (F32,)),
    (111, 64, (BF16, F32)),
    (111, 1, (F16, F16, F32)),
    (32000, 3, (F16,)),
    (49152, 1, (BF16, BF16)),
    (49152, 64, (F32, F16)),
    (151936, 3, (BF16, F32)),
    (151936, 1, (F32,)),
]


def varied_row_params(batch: int, vocab: int, generator: torch.Generator) -> dict:
    """Per-row parameters that differ from row to row: greedy, plain, top-k, top-p and both together."""
    kinds = torch.arange(batch) % 5
    temperature = torch.where(kinds == 0, 0.0, 0.5 + torch.rand(batch, generator=generator))
    top_k = torch.where((kinds == 2) | (kinds == 4), torch.randint(1, 60, (batch,), generator=generator), 0)
    top_p = torch.where((kinds == 3) | (kinds == 4), 0.3 + 0.65 * torch.rand(batch, generator=generator), 1.0)
    seed = torch.randint(-(2**62), 2**62, (batch,), generator=generator)
    return row_params(batch, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, step=7)


# --- samplers against the exact distribution ---

DRAWS = 40000


def exact_distribution(logits, weights, temperature, top_k, top_p) -> torch.Tensor:
    mixed = reference.mix_logits(logits, weights).double()
    divisor = temperature if temperature > 0 else 1.0
    return reference.filtered_log_probs(mixed / divisor, torch.tensor([top_k]),
                                        torch.tensor([top_p], dtype=torch.float64)).exp()[0]


def assert_follows(tokens: torch.Tensor, probs: torch.Tensor) -> None:
    """DRAWS tokens follow probs: none outside the support, a total-variation bound, and a chi-square p > 1e-4.
    The first two need no scipy; without scipy the chi-square test is left out, except in the README's test
    environment (tests/run.sh installs scipy), where a missing scipy fails."""
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    outside = counts[probs == 0].sum().item()
    assert outside == 0, f"{outside} draws landed outside the filtered support"
    support = probs > 0
    total_variation = 0.5 * (counts / DRAWS - probs).abs().sum().item()
    # E[TV] is about sqrt(support / (2 pi N)); 3x that is far in the tail for these sizes.
    bound = 3 * (support.sum().item() / (6.283 * DRAWS)) ** 0.5 + 1e-3
    assert total_variation < bound, f"TV {total_variation:.4f} >= {bound:.4f}"
    try:
        import scipy.stats as scipy_stats
    except ModuleNotFoundError:
        if os.environ.get("FASTDOCTOR_TEST_INSTALLED"):
            pytest.fail("scipy is missing from the test environment (tests/run.sh installs it): the chi-square "
                        "test of every sampler needs it")
        return
    expected = probs[support] * DRAWS
    # Pool bins with fewer than 5 expected draws, as the chi-square approximation needs.
    small = expected < 5
    observed = counts[support]
    if small.any():
        observed = torch.cat([observed[~small], observed[small].sum().reshape(1)])
        expected = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    if observed.numel() > 1:
        p_value = scipy_stats.chisquare(observed.numpy(), expected.numpy()).pvalue
        assert p_value > 1e-4, f"chi-square p = {p_value:.2e}"


# --- router gating ---

def make_router(vocab: int, k: int, d: int, hidden: int, generator: torch.Generator, *, num_embeddings=None) -> dict:
    """Random router parameters scaled so that alpha spreads over (0, 1) and depends on every feature."""
    width = 2 * k * (d + 1)
    return {
        "embedding": torch.randn(num_embeddings or vocab, d, generator=generator),
        "w1": torch.randn(hidden, width, generator=generator) / width**0.5,
        "b1": torch.randn(hidden, generator=generator) * 0.1,
        "w2": torch.randn(hidden, generator=generator) * 2 / hidden**0.5,
        "b2": torch.randn(1, generator=generator) * 0.1,
    }


def run_op(base, rm, router, params, k, vocab_size=None, validate=True):
    return ops.routed_sampling_from_logits(base, rm, **router, top_k_features=k, vocab_size=vocab_size,
                                           validate=validate, **params)


def run_reference(base, rm, router, params, k, vocab_size=None):
    p = {name: value.cpu() for name, value in params.items()}
    return reference.routed_sampling_from_logits(
        base.cpu(), rm.cpu(), *(router[n].cpu() for n in ("embedding", "w1", "b1", "w2", "b2")), p["temperature"],
        p["top_k"], p["top_p"], p["seed"], p["step"], k, vocab_size)


# (batch, vocab, K, base dtype, rm dtype): odd sizes, real vocabularies, every dtype.
CASES = [
    (1, 111, 5, F32, F32),
    (3, 111, 1, F16, F32),
    (33, 111, 20, BF16, BF16),
    (3, 32000, 20, BF16, F32),
    (1, 32000, 5, F32, F16),
    (33, 49152, 20, F32, BF16),
    (3, 49152, 1, BF16, BF16),
    (1, 49152, 20, F32, F32),
]


# --- tiny random HF models ---

VOCAB = 211


def tiny_model(family: str, *, vocab: int = VOCAB, layers: int = 2, seed: int = 0, positions: int = 256):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    special = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions, **special)
        model = LlamaForCausalLM(config)
    elif family == "qwen2":
        config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions, **special)
        model = Qwen2ForCausalLM(config)
    elif family == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=64, n_layer=layers, n_head=4, n_positions=positions, **special)
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(family)
    return model.eval()


def random_lora(patient, *, seed: int, rank: int = 4, base=None):
    """A peft LoRA model of `patient` (over a weight-sharing copy, or over `base`) with every LoRA A and B drawn
    from N(0, 0.3): a doctor whose deltas change the tokens."""
    from fastdoctor import weights
    from fastdoctor.lora import attach_lora

    torch.manual_seed(seed)
    lm = attach_lora(base if base is not None else weights.weight_sharing_copy(patient), rank=rank)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.3)
    return lm.eval()


class Opaque(torch.nn.Module):
    """A model as a separate doctor: it forwards to `inner` (a peft LoRA model, say) but is no LoRA model to
    shared_base.plan, so generate runs it in a lane of its own. The reference the stacked forward is checked
    against (the planner would otherwise stack a peft doctor of the patient's base weights)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    @property
    def config(self):
        return self.inner.config

    def get_base_model(self):  # what kv_cache asks for the cache keyword
        return self.inner.get_base_model() if hasattr(self.inner, "get_base_model") else self.inner

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, **kwargs):
        return self.inner(**kwargs)


def left_padded_prompts(batch: int = 3, length: int = 7, seed: int = 0, vocab: int = VOCAB):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for row in range(batch):
        pad = row % 3  # rows of different lengths
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    return ids, mask


# A synthetic preference task for tiny models: chosen responses use 'good' tokens that carry positive
# stage-1 rewards, rejected ones use 'bad' tokens with negative rewards; everything else is neutral.

GOOD = range(10, 14)
BAD = range(40, 44)
NEUTRAL = range(70, 74)


def _response(g: torch.Generator, marked: range, reward: float, length: int):
    tokens, rewards = [], []
    for _ in range(length):
        if torch.rand((), generator=g) < 0.4:
            tokens.append(marked[int(torch.randint(len(marked), (), generator=g))])
            rewards.append(reward)
        else:
            tokens.append(NEUTRAL[int(torch.randint(len(NEUTRAL), (), generator=g))])
            rewards.append(0.0)
    tokens.append(2)  # EOS
    rewards.append(0.0)
    return torch.tensor(tokens), torch.tensor(rewards)


def synthetic_examples(count: int, seed: int = 0) -> list:
    from fastdoctor.llmdoctor.tfpo import ScoredExample

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        prompt = torch.randint(70, 200, (int(torch.randint(3, 7, (), generator=g)),), generator=g)
        chosen, chosen_r = _response(g, GOOD, 0.8, int(torch.randint(4, 10, (), generator=g)))
        rejected, rejected_r = _response(g, BAD, -0.8, int(torch.randint(4, 10, (), generator=g)))
        out.append(ScoredExample(prompt, chosen, rejected, chosen_r, rejected_r))
    return out


# --- a streamer that records the HF protocol (put(prompt), put(step tokens) ..., end()) ---

class RecordingStreamer:
    """Records every put (a copy of the tensor) and the end."""

    def __init__(self):
        self.events = []

    def put(self, value):
        self.events.append(("put", value.clone()))

    def end(self):
        self.events.append(("end", None))


# --- the CLI on tiny models with the default patient's tokenizer ---

@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    _, tokenizer = fastdoctor.load_model("default")
    root = tmp_path_factory.mktemp("models")
    folders = {}
    for name, seed in (("patient", 0), ("doctor", 1)):
        folder = root / name
        tiny_model("llama", vocab=len(tokenizer), seed=seed).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[name] = folder
    other = root / "other"
    tiny_model("llama", vocab=len(tokenizer), seed=2).save_pretrained(other)
    tokenizer.add_tokens(["<an-extra-token>"])  # a different tokenizer for the same logits width
    tokenizer.save_pretrained(other)
    folders["other"] = other
    return folders


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fastdoctor.cli", *args], capture_output=True, text=True)
