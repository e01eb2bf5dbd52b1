"""The benchmarks' eager baselines (bench/baselines.py) compute what the fused ops compute, so the speed-ups
in bench/results compare like with like."""
from __future__ import annotations

import pathlib
import sys

import torch

from conftest import F32, make_router, random_logits, row_params, run_reference

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))
import baselines  # noqa: E402  (bench/ is not a package)


def test_the_eager_chain_uses_the_same_alpha(generator):
    base, rm = random_logits(4, 2000, F32, generator), random_logits(4, 2000, F32, generator)
    router = make_router(2000, 20, d=8, hidden=32, generator=generator)
    zeros = torch.zeros(4, dtype=torch.int64)
    tokens, alpha = baselines.eager_routed_sampling_chain(base, rm, *router.values(), torch.zeros(4), zeros,
                                                          torch.ones(4), 20)
    ref_tokens, _, ref_alpha = run_reference(base, rm, router, row_params(4, temperature=0.0), 20)
    torch.testing.assert_close(alpha, ref_alpha, rtol=0, atol=1e-6)
    assert torch.equal(tokens, ref_tokens)
