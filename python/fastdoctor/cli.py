"""The `fastdoctor` command. Subcommands: env (what is installed and which kernels loaded)."""
from __future__ import annotations

import argparse
import sys


def environment_report() -> dict[str, str]:
    import torch

    import fastdoctor
    from fastdoctor import _C

    info = _C.build_info()
    try:
        import transformers

        transformers_version = transformers.__version__
    except ImportError:
        transformers_version = "not installed"
    cuda_available = torch.cuda.is_available()
    cuda_kernels = bool(info["cuda_compiled"]) and torch._C._dispatch_has_kernel_for_dispatch_key(
        "fastdoctor::mixed_sampling_from_logits", "CUDA")
    cpu_kernels = torch._C._dispatch_has_kernel_for_dispatch_key("fastdoctor::mixed_sampling_from_logits", "CPU")
    return {
        "fastdoctor": fastdoctor.__version__,
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda or "none (CPU build)",
        "transformers": transformers_version,
        "CPU kernels": "loaded" if cpu_kernels else "missing",
        "CUDA kernels": ("loaded" if cuda_kernels else "missing") + (
            f" (compiled for sm_{info['cuda_archs']})" if info["cuda_compiled"] else " (built without CUDA)"),
        "CUDA device": torch.cuda.get_device_name(0) if cuda_available else "none",
        "ops run on": "cuda" if (cuda_available and cuda_kernels) else "cpu",
    }


def _cmd_env(_args: argparse.Namespace) -> int:
    for key, value in environment_report().items():
        print(f"{key:>14}: {value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastdoctor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="print versions and which compiled kernels loaded").set_defaults(func=_cmd_env)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
