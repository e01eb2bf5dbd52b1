"""Preference fronts: many weight vectors decoded in one batch (per-row weights), the two weight conventions
for guidance strengths g_i, and the hypervolume that summarises a two-dimensional front.

"normalised" (METHODS.md §1, GenARM's decoding note): g_i are raw strengths against the patient's weight 1,
and the product is sampled at temperature 1 after normalising by 1 + sum g:

    log p_dec = (log p_patient + sum_i g_i log p_i) / (1 + sum_i g_i),

i.e. GenARM's own code (temperature 1 / (1 + sum alpha)), the convention of GenARM's ARMs. The decoded
distribution is a weighted geometric mean of distributions at temperature 1, never sharper than its sharpest
member (raw weights at temperature 1 sharpen: p * q is p^2 when q = p).

"advantage" (METHODS.md decision 9, proxy-tuning's form): for a doctor trained from a reference pi_ref (a
reference-flow TFPO doctor of the patient: pi_ref = the patient), log pi_doc - log pi_ref is its learned
advantage, and

    log p_dec = log p_patient + sum_i g_i (log p_i - log p_patient),   alpha = 1 - sum g, beta_i = g_i,

which is the patient itself at g = 0 and the doctor itself at g = 1, never sharpens the patient where the
doctors agree with it, and lets g exceed 1 (alpha is then negative).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def normalised_weights(guidance: Sequence[float]) -> tuple[float, list[float]]:
    """(alpha, betas) for generate from raw guidance strengths g_i >= 0: alpha = 1 / (1 + sum g),
    beta_i = g_i / (1 + sum g); they sum to 1."""
    guidance = [float(g) for g in guidance]
    if any(not (0 <= g < float("inf")) for g in guidance):
        raise ValueError(f"guidance weights: expected finite numbers >= 0, got {guidance}")
    total = 1.0 + sum(guidance)
    return 1.0 / total, [g / total for g in guidance]


def advantage_weights(guidance: Sequence[float]) -> tuple[float, list[float]]:
    """(alpha, betas) for generate from guidance strengths g_i >= 0 applied to each doctor's advantage over the
    patient: alpha = 1 - sum g, beta_i = g_i (for doctors whose reference is the patient)."""
    guidance = [float(g) for g in guidance]
    if any(not (0 <= g < float("inf")) for g in guidance):
        raise ValueError(f"guidance weights: expected finite numbers >= 0, got {guidance}")
    return 1.0 - sum(guidance), guidance


CONVENTIONS = {"normalised": normalised_weights, "advantage": advantage_weights}


def guidance_weights(guidance: Sequence[float], convention: str = "normalised") -> tuple[float, list[float]]:
    """(alpha, betas) for guidance strengths under `convention` ("normalised" or "advantage")."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention: expected one of {sorted(CONVENTIONS)}, got {convention!r}")
    return CONVENTIONS[convention](guidance)


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


def row_weights(vectors: Sequence[Sequence[float]], rows_per_vector: int,
                convention: str = "normalised") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-row (alpha [R], [beta_i [R]]) for `rows_per_vector` rows of each guidance vector in turn, under
    `convention`: the batch carries the whole front."""
    if not vectors:
        raise ValueError("row_weights: no weight vectors")
    width = len(vectors[0])
    if any(len(v) != width for v in vectors):
        raise ValueError(f"row_weights: every vector needs {width} weights, got {[len(v) for v in vectors]}")
    weights = [guidance_weights(v, convention) for v in vectors]
    alpha = torch.tensor([a for a, _ in weights for _ in range(rows_per_vector)], dtype=torch.float32)
    betas = [torch.tensor([b[i] for _, b in weights for _ in range(rows_per_vector)], dtype=torch.float32)
             for i in range(width)]
    return alpha, betas
