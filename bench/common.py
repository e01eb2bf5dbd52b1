"""Timing and reporting shared by the benchmarks: medians, the hardware's name, JSON plus markdown."""
from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable

import torch

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def hardware_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    model = platform.processor() or "unknown CPU"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def median_seconds(fn: Callable[[], object], device: str, *, min_reps: int = 5, min_seconds: float = 0.3,
                   max_reps: int = 200) -> float:
    """Median wall time of fn() after a warm-up call; CUDA timings use events around each call."""
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < min_reps or (time.perf_counter() - started < min_seconds and len(samples) < max_reps):
        if device == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(begin.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def median_wall_seconds(fn: Callable[[], object], reps: int, *, warmup: bool = False) -> float:
    """Median wall time of `reps` calls of fn() (an optional untimed warm-up call first), for end-to-end
    runs too long for median_seconds' adaptive repetition."""
    if warmup:
        fn()
    samples = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def forwards_only(models, ids: torch.Tensor, new_tokens: int) -> None:
    """The models' own work in KV-cached guided decoding, and nothing else: a prefill (last-position logits)
    and then new_tokens - 1 single-token forwards per model, feeding the last prompt token back (no mixing,
    no sampling). The denominator of the loop-overhead figures."""
    caches = [model(ids, use_cache=True, logits_to_keep=1).past_key_values for model in models]
    mask = torch.ones_like(ids)
    token = ids[:, -1:]
    position = torch.full_like(token, ids.shape[1])
    for _ in range(new_tokens - 1):
        mask = torch.cat([mask, mask.new_ones(ids.shape[0], 1)], dim=1)
        for i, model in enumerate(models):
            caches[i] = model(token, attention_mask=mask, position_ids=position, past_key_values=caches[i],
                              use_cache=True).past_key_values
        position = position + 1


def peak_rss_rise(fn) -> int:
    """Bytes by which the process's peak RSS rose during fn() (Linux: VmHWM reset through clear_refs)."""
    def field(name):
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith(name)).split()[1]) * 1024

    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = field("VmRSS")
    fn()
    return field("VmHWM") - before


def write_results(name: str, device: str, meta: dict, rows: list[dict], columns: list[tuple[str, str]],
                  note: str = "") -> tuple[pathlib.Path, pathlib.Path]:
    """Writes bench/results/<name>_<device>.json and .md; columns are (key, header) pairs."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in (meta["hardware"] if device == "cuda" else "cpu")).strip("-")
    stem = RESULTS / f"{name}_{slug.lower()}"
    clean = [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()} for row in rows]
    payload = {"benchmark": name, **meta, "rows": clean}  # NaN (a variant not run) becomes null in JSON
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# {name} on {meta['hardware']}", "",
             f"torch {meta['torch']}, fastdoctor {meta['fastdoctor']}, {meta['date']}. {note}".strip(), "",
             "| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[k]) for k, _ in columns) + " |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem.with_suffix(".json"), stem.with_suffix(".md")


def _fmt(value) -> str:
    if isinstance(value, float) and value != value:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def run_meta(device: str) -> dict:
    import fastdoctor

    return {"hardware": hardware_name(device), "device": device, "torch": torch.__version__,
            "fastdoctor": fastdoctor.__version__, "date": time.strftime("%Y-%m-%d"),
            "threads": torch.get_num_threads(), "host": os.uname().machine}
