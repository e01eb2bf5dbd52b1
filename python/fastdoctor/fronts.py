"""Preference fronts: many weight vectors decoded in one batch (per-row weights), the weight convention every
method shares, and the hypervolume that summarises a two-dimensional front.

The convention (METHODS.md §1, GenARM's decoding note): a method's guidance weights g_i are raw strengths
against the patient's weight 1, and the product is sampled at temperature 1 after normalising by 1 + sum g:

    log p_dec = (log p_patient + sum_i g_i log p_i) / (1 + sum_i g_i),

i.e. GenARM's own code (temperature 1 / (1 + sum alpha)), used for TFPO doctors and GenARM ARMs alike. The
decoded distribution is then a weighted geometric mean of distributions at temperature 1, never sharper than
its sharpest member, so a strong weight moves toward the doctor instead of collapsing into a loop (raw weights
at temperature 1 sharpen: p * q is p^2 when q = p).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def normalised_weights(guidance: Sequence[float]) -> tuple[float, list[float]]:
    """(alpha, betas) for generate from raw guidance strengths g_i >= 0: alpha = 1 / (1 + sum g),
    beta_i = g_i / (1 + sum g); they sum to 1."""
    guidance = [float(g) for g in guidance]
    if any(g < 0 or g != g for g in guidance):
        raise ValueError(f"guidance weights: expected numbers >= 0, got {guidance}")
    total = 1.0 + sum(guidance)
    return 1.0 / total, [g / total for g in guidance]


def weight_grid(points: int = 11) -> list[tuple[float, float]]:
    """GenARM's and PARM's protocol: (w, 1 - w) for w = 0, 1/(points - 1), ..., 1."""
    if points < 2:
        raise ValueError(f"weight grid: expected at least 2 points, got {points}")
    return [(round(k / (points - 1), 10), round(1 - k / (points - 1), 10)) for k in range(points)]


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a is at least as good as b on every axis and better on one (every axis maximised)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def pareto_front(points: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """The non-dominated points (duplicates kept once), sorted by the first axis."""
    unique = sorted({(float(p[0]), float(p[1])) for p in points})
    return [p for p in unique if not any(dominates(q, p) for q in unique)]


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Area dominated by `points` and dominating `reference` (both axes maximised); points that do not
    dominate the reference on both axes add nothing."""
    rx, ry = float(reference[0]), float(reference[1])
    front = [(x, y) for x, y in pareto_front(points) if x > rx and y > ry]
    area, previous_y = 0.0, ry
    for x, y in sorted(front, key=lambda p: -p[0]):  # right to left: y rises along a front
        if y > previous_y:
            area += (x - rx) * (y - previous_y)
            previous_y = y
    return area


def row_weights(vectors: Sequence[Sequence[float]], rows_per_vector: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-row (alpha [R], [beta_i [R]]) for `rows_per_vector` rows of each guidance vector in turn, normalised
    as above: the batch carries the whole front."""
    if not vectors:
        raise ValueError("row_weights: no weight vectors")
    width = len(vectors[0])
    if any(len(v) != width for v in vectors):
        raise ValueError(f"row_weights: every vector needs {width} weights, got {[len(v) for v in vectors]}")
    normalised = [normalised_weights(v) for v in vectors]
    alpha = torch.tensor([a for a, _ in normalised for _ in range(rows_per_vector)], dtype=torch.float32)
    betas = [torch.tensor([b[i] for _, b in normalised for _ in range(rows_per_vector)], dtype=torch.float32)
             for i in range(width)]
    return alpha, betas
