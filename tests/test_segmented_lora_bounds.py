"""The CPU LoRA loops read no byte past their buffers, in the vector clones this CPU runs: tests/cpp/
segmented_lora_guard.cpp compiles csrc/cpu/segmented_lora_cpu.cpp with the extension's flags and runs its loops on
buffers that end at a PROT_NONE page, checking on the way that a row gives the same bits in a block of 4 rows and
alone. (The results of an over-read can be right: only a fault at a page end shows it, so the reference tests
cannot.)"""
from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest
import torch
from torch.utils import cpp_extension

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (the compiler the extension is built with)")
def test_the_loops_stay_inside_their_buffers(tmp_path):
    binary = tmp_path / "segmented_lora_guard"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    library_dir = cpp_extension.library_paths()[0]
    command = ["g++", "-std=c++20", "-O3", "-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno", "-fopenmp",
               f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-w", f"-I{REPO / 'csrc'}",
               *[f"-isystem{p}" for p in cpp_extension.include_paths()],
               str(REPO / "tests" / "cpp" / "segmented_lora_guard.cpp"), "-o", str(binary),
               f"-L{library_dir}", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{library_dir}"]
    built = subprocess.run(command, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    ran = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, f"exit {ran.returncode} (-11: a read past a buffer)\n{ran.stdout[-2000:]}"
    assert ran.stdout.count("ok ") == 8 * 4 * 2
