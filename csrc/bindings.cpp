// fastdoctor._C: op schemas (TORCH_LIBRARY) and the pybind11 module (build information, and one op bound for
// eager calls), and nothing else.
// Kernels register themselves per backend in csrc/cpu/*.cpp and csrc/cuda/*.cu (TORCH_LIBRARY_IMPL).
#include <ATen/core/dispatch/Dispatcher.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>  // the at::Tensor <-> torch.Tensor casters
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "kernels/philox.h"

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
  // Token-level scoring (LLMdoctor stage 1). See csrc/kernels/token_scoring.h.
  // log p(targets[t] | logits[t]) for logits [T, V]: float32 [T]; 0 where targets == ignore_index.
  m.def("target_log_probs_from_logits(Tensor logits, Tensor targets, int ignore_index=-100) -> Tensor");
  // The same from hidden states [T, H] and the LM head [V, H], vocabulary chunk by chunk.
  m.def(
      "target_log_probs_from_hidden(Tensor hidden, Tensor weight, Tensor targets, int chunk_size=4096, "
      "int ignore_index=-100) -> Tensor");
  // r = sign * tanh(dhat / tau) * [. > theta], dhat = |lp_pos - lp_neg| / (masked mean + eps): float32 [B, T].
  m.def(
      "token_rewards_from_face_logprobs(Tensor logp_pos, Tensor logp_neg, Tensor mask, Tensor sign, "
      "float tau=1.0, float theta=0.0, float eps=1e-6) -> Tensor");
  // TARo router gating: alpha = sigmoid(w2 . tanh(w1 h + b1) + b2) from the top-K features of both models,
  // then mixed_sampling_from_logits on (1 - alpha) z_base + alpha z_rm. Returns (tokens int64 [B],
  // logprobs float32 [B], alpha float32 [B]). See csrc/kernels/router_gating.h.
  m.def(
      "routed_sampling_from_logits(Tensor base_logits, Tensor rm_logits, Tensor embedding, Tensor w1, Tensor b1, "
      "Tensor w2, Tensor b2, Tensor temperature, Tensor top_k, Tensor top_p, Tensor seed, Tensor step, "
      "int top_k_features=20, int vocab_size=-1) -> (Tensor, Tensor, Tensor)");
  // Multi-LoRA batching: y[r] += scales[i] * (x[r] @ shrink[i]^T) @ expand[i] for the rows r of segment
  // segments[i] (segments of `rows` rows), in place. See csrc/kernels/segmented_lora.h.
  m.def(
      "segmented_lora_(Tensor(a!) y, Tensor x, Tensor[] shrink, Tensor[] expand, float[] scales, int[] segments, "
      "int rows) -> ()");
  // The stacked copy's nn.Linear forward in one call: y = linear(x, weight, bias), then segmented_lora_ on y with
  // rows = x.size(0) / segment_count. x comes last so that functools.partial can bind everything else.
  m.def(
      "linear_segmented_lora(Tensor weight, Tensor? bias, Tensor[] shrink, Tensor[] expand, float[] scales, "
      "int[] segments, int segment_count, Tensor x) -> Tensor");
}

namespace {

// linear_segmented_lora with everything but x bound once: the stacked copy's nn.Linear forward in eager decode.
// Calling the op through torch.ops parses its four list arguments against the schema on every call (about 3.7 us
// more than F.linear for a 576 x 576 bf16 projection); here they are converted once, and each call is one typed
// dispatcher call with x, so the CPU or CUDA kernel is still chosen by the dispatcher. The tensors are held by
// reference (shared TensorImpls): in-place updates of the adapter weights are seen by later calls.
class BoundLinearSegmentedLora {
 public:
  BoundLinearSegmentedLora(at::Tensor weight, std::optional<at::Tensor> bias, std::vector<at::Tensor> shrink,
                           std::vector<at::Tensor> expand, std::vector<double> scales, std::vector<int64_t> segments,
                           int64_t segment_count)
      : weight_(std::move(weight)), bias_(std::move(bias)), shrink_(std::move(shrink)), expand_(std::move(expand)),
        scales_(std::move(scales)), segments_(std::move(segments)), segment_count_(segment_count) {}

  at::Tensor operator()(const at::Tensor& x) const {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fastdoctor::linear_segmented_lora", "")
                               .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, at::TensorList,
                                                 at::TensorList, at::ArrayRef<double>, at::IntArrayRef, int64_t,
                                                 const at::Tensor&)>();
    return op.call(weight_, bias_, shrink_, expand_, scales_, segments_, segment_count_, x);
  }

 private:
  at::Tensor weight_;
  std::optional<at::Tensor> bias_;
  std::vector<at::Tensor> shrink_, expand_;
  std::vector<double> scales_;
  std::vector<int64_t> segments_;
  int64_t segment_count_;
};

}  // namespace

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
  // Exposed so the tests can check the C++ Philox against the Random123 known-answer vectors directly.
  m.def("philox4x32_10", [](uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
    const fastdoctor::Philox4 r = fastdoctor::philox4x32_10(c0, c1, c2, c3, k0, k1);
    return std::make_tuple(r.x[0], r.x[1], r.x[2], r.x[3]);
  });
  pybind11::class_<BoundLinearSegmentedLora>(m, "BoundLinearSegmentedLora")
      .def(pybind11::init<at::Tensor, std::optional<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
                          std::vector<double>, std::vector<int64_t>, int64_t>(),
           pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("shrink"), pybind11::arg("expand"),
           pybind11::arg("scales"), pybind11::arg("segments"), pybind11::arg("segment_count"))
      .def("__call__", &BoundLinearSegmentedLora::operator(), pybind11::arg("x"));
  m.def("philox_uniform", &fastdoctor::philox_uniform, "uniform double in [0, 1) for (seed, step, stream)");
}
