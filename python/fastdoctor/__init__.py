"""fastdoctor: fast token-level test-time alignment (LLMdoctor, TARo).

A frozen patient LLM is steered token by token by small doctor models; the per-token work runs in fused
kernels registered under torch.ops.fastdoctor.
"""
import torch  # noqa: F401  (must load before _C: the extension links against torch's libraries)

from . import _C
from .adapters import AdapterDoctor
from .doctors import load_doctor
from .generate import generate
from .hf_generate import guided
from .models import load_model, make_doctor
from .ops import mixed_sampling_from_logits, routed_sampling_from_logits

__version__ = _C.build_info()["version"]

__all__ = ["__version__", "AdapterDoctor", "generate", "guided", "load_doctor", "load_model", "make_doctor",
           "mixed_sampling_from_logits", "routed_sampling_from_logits"]
