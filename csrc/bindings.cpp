// fastdoctor._C: op schemas (TORCH_LIBRARY) and build information (pybind11), and nothing else.
// Kernels register themselves per backend in csrc/cpu/*.cpp and csrc/cuda/*.cu (TORCH_LIBRARY_IMPL).
#include <pybind11/pybind11.h>
#include <torch/library.h>

#ifndef FASTDOCTOR_VERSION
#define FASTDOCTOR_VERSION "unknown"
#endif
#ifndef FASTDOCTOR_CUDA_ARCHS
#define FASTDOCTOR_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(fastdoctor, m) {
  // Mix K logit tensors [B, V] with per-row weights, then temperature, top-k, top-p, and sample with
  // Philox(seed, step). Returns (tokens int64 [B], logprobs float32 [B]). See csrc/kernels/mix_sample.h.
  m.def(
      "mixed_sampling_from_logits(Tensor[] logits, Tensor weights, Tensor temperature, Tensor top_k, "
      "Tensor top_p, Tensor seed, Tensor step, int vocab_size=-1) -> (Tensor, Tensor)");
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastdoctor compiled kernels (ops live under torch.ops.fastdoctor)";
  m.def("build_info", []() {
    pybind11::dict info;
    info["version"] = FASTDOCTOR_VERSION;
#ifdef FASTDOCTOR_WITH_CUDA
    info["cuda_compiled"] = true;
#else
    info["cuda_compiled"] = false;
#endif
    info["cuda_archs"] = FASTDOCTOR_CUDA_ARCHS;
    info["cpu_kernels"] = true;
    return info;
  });
}
