"""One small training loop for every model fastdoctor trains (TFPO doctors, distillation, GenARM / TARo
reward models, routers), in the nanoGPT manner: AdamW, gradient accumulation, clipping, linear warmup then
cosine decay, bf16 autocast on CUDA, atomic checkpoints that resume bit-for-bit, one parseable log line
every N steps (a tqdm bar on a terminal), a JSONL log and a PNG of the curves.

Data parallel through torch.distributed: launch with `torchrun --nproc_per_node N ...` and every process
takes its share of each global batch; gradients are averaged with one all-reduce per optimizer step, so N
processes make the same update as one process on the same global batch (tested with gloo on the CPU).

The order of examples is a function of (seed, epoch) only, and the checkpoint holds the optimizer state and
the RNG state, so a run resumed from step k continues exactly as the uninterrupted run would have.
"""
from __future__ import annotations

import atexit
import dataclasses
import functools
import json
import math
import os
import pathlib
import time
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

from .files import first_non_finite, recover_directory, staged_directory
from .progress import Progress

LossFn = Callable[[list], tuple[torch.Tensor, dict]]


@dataclasses.dataclass
class TrainConfig:
    """steps: optimizer steps. batch_size: examples per optimizer step over all processes; micro_batch_size
    examples go through one forward/backward (0: the whole local batch), the rest is gradient accumulation."""

    steps: int = 100
    batch_size: int = 8
    micro_batch_size: int = 0
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50
    autocast: str = "auto"  # "auto": bf16 on CUDA, none on the CPU; or "bf16" / "none"

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.micro_batch_size < 0 or self.warmup_steps < 0:
            raise ValueError("micro_batch_size and warmup_steps: expected >= 0")
        if not self.lr > 0:
            raise ValueError(f"lr: expected > 0, got {self.lr}")
        if self.autocast not in ("auto", "bf16", "none"):
            raise ValueError(f"autocast: expected 'auto', 'bf16' or 'none', got {self.autocast!r}")

    def uses_bf16(self, device: torch.device) -> bool:
        """Whether the forward runs under bf16 autocast on `device`."""
        return self.autocast == "bf16" or (self.autocast == "auto" and device.type == "cuda")

    def learning_rate(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(self.steps - self.warmup_steps, 1)
        cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine)


def init_distributed() -> tuple[int, int]:
    """(rank, world size). Under torchrun (WORLD_SIZE > 1) joins the process group: NCCL with CUDA, else
    gloo. A plain run is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        # A process group left to the interpreter's teardown let gloo's threads outlive it: under load a rank
        # aborted at exit ("terminate called without an active exception"). Destroy it before that.
        atexit.register(shutdown_distributed, wait=False)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shutdown_distributed(wait: bool = True) -> None:
    """Leaves the process group cleanly (after a barrier with wait=True, so no rank tears down while another
    still talks to it); a no-op when none is initialised."""
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, count: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(count, generator=generator).tolist()


def batch_indices(step: int, count: int, batch_size: int, seed: int) -> list[int]:
    """The global batch of optimizer step `step`: consecutive positions of an endless stream of seeded
    epoch permutations."""
    positions = range(step * batch_size, (step + 1) * batch_size)
    return [_epoch_order(seed, p // count, count)[p % count] for p in positions]


# ---- checkpoints: safetensors + JSON, never pickle ----

def _optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, list]:
    state = optimizer.state_dict()
    tensors = {}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            tensors[f"{index}.{key}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, groups


def _optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict, groups: list) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _signature(model: torch.nn.Module, config: TrainConfig, count: int) -> dict:
    """What a checkpoint must match to be resumed: everything that shapes the updates (not the logging
    cadence, and not the process count, since N processes make the single-process update)."""
    shaping = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("log_every", "checkpoint_every")}
    return {"config": shaping, "examples": count,
            "params": {name: list(p.shape) for name, p in _trainable(model).items()}}


def save_checkpoint(path: pathlib.Path, model, optimizer, step: int, signature: dict) -> None:
    """Writes <path>/{trainable,optimizer,rng}.safetensors + state.json into a temporary folder and renames
    it into place, so a crash never leaves a half-written checkpoint."""
    from safetensors.torch import save_file

    with staged_directory(path) as staging:
        save_file({k: v.detach().cpu().contiguous() for k, v in _trainable(model).items()},
                  str(staging / "trainable.safetensors"))
        tensors, groups = _optimizer_to_tensors(optimizer)
        save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, str(staging / "optimizer.safetensors"))
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        save_file(rng, str(staging / "rng.safetensors"))
        (staging / "state.json").write_text(json.dumps({"step": step, "param_groups": groups,
                                                        "signature": signature}, indent=1))


def load_checkpoint(path: pathlib.Path, model, optimizer, signature: dict) -> int:
    """Restores the trainable weights, optimizer and RNG; returns the step to continue from. Raises
    ValueError for a corrupt checkpoint or one written by another configuration or model."""
    from safetensors.torch import load_file

    try:
        state = json.loads((path / "state.json").read_text())
        weights = load_file(str(path / "trainable.safetensors"))
        moments = load_file(str(path / "optimizer.safetensors"))
        rng = load_file(str(path / "rng.safetensors"))
    except Exception as error:  # json and safetensors raise their own types for corrupt files
        raise ValueError(f"{path}: corrupt checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or state.get("signature") != signature:
        raise ValueError(f"{path}: the checkpoint was written for another model, data set or configuration; "
                         "train into a new output folder or pass resume=False (--no-resume)")
    step = state.get("step")
    steps = signature["config"]["steps"]
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= steps:
        raise ValueError(f"{path}/state.json: step {step!r} is outside this run's 1..{steps}")
    trainable = _trainable(model)
    for name, p in trainable.items():
        if name not in weights or tuple(weights[name].shape) != tuple(p.shape):
            found = tuple(weights[name].shape) if name in weights else "missing"
            raise ValueError(f"{path}/trainable.safetensors: {name} is {found}, the model's is {tuple(p.shape)}")
    for file, tensors in (("trainable", weights), ("optimizer", moments)):
        bad = first_non_finite(tensors.items())
        if bad is not None:
            raise ValueError(f"{path}/{file}.safetensors: {bad} holds NaN or inf; the checkpoint is unusable")
    with torch.no_grad():
        for name, p in trainable.items():
            p.copy_(weights[name])
    _optimizer_from_tensors(optimizer, {k: v.to(next(iter(trainable.values())).device) for k, v in moments.items()},
                            state["param_groups"])
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return step


# ---- logging ----

def plot_history(history: Sequence[dict], path: str | os.PathLike, keys: Sequence[str] | None = None) -> None:
    """A PNG with one panel per logged quantity against the step (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(keys or [k for k in history[0] if k not in ("step", "seconds", "lr", "tokens_per_s")])
    figure, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    steps = [r["step"] for r in history]
    for axis, key in zip(axes[0], keys):
        axis.plot(steps, [r.get(key, float("nan")) for r in history])
        axis.set_title(key)
        axis.set_xlabel("step")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _read_log(path: pathlib.Path, upto: int) -> list[dict]:
    """The log's records up to step `upto`. A last line cut short (a kill mid-write) is dropped with a
    warning; a damaged line anywhere else is an error naming it."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not a step record")
        except ValueError as error:
            if number == len(lines):
                warnings.warn(f"{path}:{number}: dropped a cut-short last line ({error})", stacklevel=2)
                break
            raise ValueError(f"{path}:{number}: damaged log line ({error})") from None
        records.append(record)
    return [r for r in records if r["step"] <= upto]


# ---- the loop ----

def train(model: torch.nn.Module, examples: Sequence, loss_fn: LossFn, config: TrainConfig,
          out: str | os.PathLike, *, name: str = "train", resume: bool = True,
          stop_after: int | None = None) -> list[dict]:
    """Trains the parameters of `model` that require grad. loss_fn(list of examples) returns the mean loss
    over them and a dict of float metrics (a "tokens" entry feeds tokens/s). Writes <out>/checkpoint,
    <out>/log.jsonl and <out>/loss.png (process 0 only). `stop_after` stops after that many steps, as an
    interruption would. Returns the log records."""
    if len(examples) == 0:
        raise ValueError("examples: the training set is empty")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if config.batch_size % world:
        raise ValueError(f"batch_size: {config.batch_size} is not divisible by the {world} processes")
    local = config.batch_size // world
    micro = config.micro_batch_size or local
    out = pathlib.Path(out)
    checkpoint = out / "checkpoint"
    if rank == 0:
        recover_directory(checkpoint)  # a commit a kill interrupted: put the previous checkpoint back
    params = list(_trainable(model).values())
    if not params:
        raise ValueError("model: no parameter requires grad")
    device = params[0].device
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    signature = _signature(model, config, len(examples))
    start = 0
    if resume and (checkpoint / "state.json").exists():
        start = load_checkpoint(checkpoint, model, optimizer, signature)
    else:
        torch.manual_seed(config.seed + rank)  # dropout streams: fixed per run, distinct per process
    use_bf16 = config.uses_bf16(device)
    log_path = out / "log.jsonl"
    history = _read_log(log_path, start) if rank == 0 else []
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        log_path.write_text("".join(json.dumps(r) + "\n" for r in history))
    progress = Progress(name, config.steps, done=start, every=config.log_every, enabled=rank == 0)
    model.train()
    try:
        for step in range(start, config.steps):
            if stop_after is not None and step >= start + stop_after:
                break
            began = time.time()
            lr = config.learning_rate(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # Contiguous shares: process r's micro-batches are exactly the ones that one process would
            # accumulate in its place, so N processes reproduce the single-process update.
            indices = batch_indices(step, len(examples), config.batch_size, config.seed)[rank * local:(rank + 1) * local]
            totals: dict[str, float] = {}
            for first in range(0, local, micro):
                chunk = [examples[i] for i in indices[first: first + micro]]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    loss, metrics = loss_fn(chunk)
                # Weighted so that the all-reduced average over processes is the global batch mean.
                (loss * len(chunk) / local).backward()
                for key, value in {"loss": float(loss.detach()), **metrics}.items():
                    weight = 1.0 if key == "tokens" else len(chunk) / local
                    totals[key] = totals.get(key, 0.0) + weight * float(value)
            if world > 1:
                _all_reduce_mean([p.grad for p in params if p.grad is not None])
                packed = torch.tensor(list(totals.values()), dtype=torch.float64)
                dist.all_reduce(packed)
                totals = {k: v / (1 if k == "tokens" else world) for k, v in zip(totals, packed.tolist())}
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.clip)
            if not math.isfinite(totals["loss"]) or not bool(torch.isfinite(grad_norm)):
                what = "loss" if not math.isfinite(totals["loss"]) else "gradient norm"
                raise FloatingPointError(f"{name}: the {what} is not finite at step {step + 1} (loss "
                                         f"{totals['loss']}, gradient norm {float(grad_norm)}); stopped before "
                                         "the update, so no checkpoint holds non-finite weights")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds = time.time() - began
            record = {"step": step + 1, **{k: v for k, v in totals.items() if k != "tokens"}, "lr": lr,
                      "grad_norm": float(grad_norm), "seconds": round(seconds, 4)}
            if "tokens" in totals:
                record["tokens_per_s"] = totals["tokens"] / max(seconds, 1e-9)
            progress.update({k: v for k, v in record.items() if k != "step"}, postfix="loss")
            if rank == 0:
                history.append(record)
                with log_path.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                    save_checkpoint(checkpoint, model, optimizer, step + 1, signature)
        if rank == 0 and stop_after is not None and history:
            save_checkpoint(checkpoint, model, optimizer, history[-1]["step"], signature)
    finally:
        progress.close()
    if rank == 0 and history:
        plot_history(history, out / "loss.png")
    model.eval()
    return history


def _all_reduce_mean(grads: list[torch.Tensor]) -> None:
    """One all-reduce over all gradients flattened together (not one call per tensor)."""
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()
