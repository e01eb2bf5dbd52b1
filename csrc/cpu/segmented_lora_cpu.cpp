// CPU kernel for segmented_lora_ (math in csrc/kernels/segmented_lora.h). Decode segments are a few rows:
// there these loops beat BLAS, whose call overhead dominates a [rows, 576] x [576, 8] product (measured on
// SmolLM2-135M's projections). Each (adapter, block of 4 rows, or single row) is one task of a single parallel
// region: the task converts its rows to float, runs the rank dot products in independent lanes (each weight read
// serving the block's rows), then the expand and the add, with AVX-512/AVX2 clones of the float loops
// (vector_math.h). The weights are float32, or bf16 bits for bf16 activations (half the bytes a memory-bound
// decode step streams). Float32 segments of 17+ rows (prefill) take ATen's addmm; 16-bit segments of any size
// stay in the loops.
// Checked against reference.segmented_lora in tests/test_segmented_lora.py, and for reads past a buffer (in the
// clones as compiled) by tests/cpp/segmented_lora_guard.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "../common/logit_args.h"
#include "../common/segmented_lora_args.h"
#include "../kernels/segmented_lora.h"
#include "vector_math.h"

namespace fastdoctor {
namespace {

// Float32 segments up to this many rows run the loops; longer ones (prefill) take ATen's addmm. BLAS on a few
// rows pays two GEMM calls per adapter and projection: measured on SmolLM2-135M's projections with two adapters of
// 8 rows each, fp32 22-24 us through ATen against 10-17 us in the loops. 16-bit segments stay in the loops at any
// size: BLAS on them also needs float copies of the rows and weights and a float [rows, out] delta to add back
// (bf16 47 us a projection at 8 rows; a bf16 prefill of 8 x 51 rows with one doctor cost 81 ms over the patient's
// own stacked prefill that way, 57 ms in the loops).
constexpr int64_t kLoopRows = 16;
constexpr int64_t kColumns = 256;          // output columns per expand chunk (its sums stay in L1)
constexpr int kRowBlock = 4;               // rows of one segment that a task shrinks and expands together
constexpr int64_t kParallelMin = 1 << 13;  // multiply-adds below which the loops run on one thread

// t [rank] = x_row @ shrink^T, four ranks at a time. W: float, or uint16_t for bf16 bits.
template <typename W>
__attribute__((always_inline)) inline void shrink_row(const float* x, const W* a, int64_t in, int64_t rank, float* t) {
  int64_t j = 0;
  for (; j + 4 <= rank; j += 4) lora_shrink_block<1, 4>(x, a, in, rank, j, t);
  for (; j < rank; ++j) lora_shrink_block<1, 1>(x, a, in, rank, j, t);
}

// t [kRowBlock, rank] = x [kRowBlock, in] @ shrink^T, two ranks at a time: each weight read serves the block's
// rows (kRowBlock x 2 x 8 lanes fit the vector registers of AVX2 and AVX-512).
template <typename W>
__attribute__((always_inline)) inline void shrink_rows(const float* x, const W* a, int64_t in, int64_t rank,
                                                       float* t) {
  int64_t j = 0;
  for (; j + 2 <= rank; j += 2) lora_shrink_block<kRowBlock, 2>(x, a, in, rank, j, t);
  for (; j < rank; ++j) lora_shrink_block<kRowBlock, 1>(x, a, in, rank, j, t);
}

// One overload per weight type and row count, each with its own vector clones (target_clones does not apply to
// templates).
FD_VECTOR_CLONES void shrink(const float* x, const float* a, int64_t in, int64_t rank, float* t) {
  shrink_row(x, a, in, rank, t);
}
FD_VECTOR_CLONES void shrink(const float* x, const uint16_t* a, int64_t in, int64_t rank, float* t) {
  shrink_row(x, a, in, rank, t);
}
FD_VECTOR_CLONES void shrink_block(const float* x, const float* a, int64_t in, int64_t rank, float* t) {
  shrink_rows(x, a, in, rank, t);
}
FD_VECTOR_CLONES void shrink_block(const float* x, const uint16_t* a, int64_t in, int64_t rank, float* t) {
  shrink_rows(x, a, in, rank, t);
}
FD_VECTOR_CLONES void expand(const float* t, const float* b, int64_t rank, int64_t out, int64_t begin, int64_t end,
                             float* acc) {
  lora_expand_columns(t, b, rank, out, begin, end, acc);
}
FD_VECTOR_CLONES void expand(const float* t, const uint16_t* b, int64_t rank, int64_t out, int64_t begin,
                             int64_t end, float* acc) {
  lora_expand_columns(t, b, rank, out, begin, end, acc);
}
FD_VECTOR_CLONES void expand_block(const float* t, const float* b, int64_t rank, int64_t out, int64_t begin,
                                   int64_t end, float* acc) {
  lora_expand_block<kRowBlock>(t, b, rank, out, begin, end, acc, kColumns);
}
FD_VECTOR_CLONES void expand_block(const float* t, const uint16_t* b, int64_t rank, int64_t out, int64_t begin,
                                   int64_t end, float* acc) {
  lora_expand_block<kRowBlock>(t, b, rank, out, begin, end, acc, kColumns);
}

FD_VECTOR_CLONES void add_scaled_float(const float* acc, int64_t n, float scale, float* y) {
  lora_add_scaled(acc, n, scale, y);
}

// y = bf16(float(y) + acc * scale) for bf16 bits, rounding to nearest even exactly as c10::BFloat16 does (NaN
// becomes 0x7FC0), in integer lanes so it vectorises.
FD_VECTOR_CLONES void add_scaled_bf16(const float* acc, int64_t n, float scale, uint16_t* y) {
  for (int64_t o = 0; o < n; ++o) {
    const float f = bfloat16_bits_to_float(y[o]) + acc[o] * scale;
    const uint32_t bits = float_as_bits(f);
    const uint16_t rounded = static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    y[o] = f != f ? static_cast<uint16_t>(0x7FC0) : rounded;
  }
}

template <typename In>
void add_scaled(const float* acc, int64_t n, float scale, In* y) {
  if constexpr (std::is_same_v<In, float>) {
    add_scaled_float(acc, n, scale, y);
  } else if constexpr (std::is_same_v<In, c10::BFloat16>) {
    add_scaled_bf16(acc, n, scale, reinterpret_cast<uint16_t*>(y));
  } else {
    lora_add_scaled(acc, n, scale, y);
  }
}

// In the model the adapter weights are cold at every call (the base weights streamed in between evict them), and
// each is a few kB: asking for every line up front keeps many loads in flight instead of one stream's worth.
inline void prefetch_bytes(const void* data, int64_t bytes) {
  const char* p = static_cast<const char*>(data);
  for (int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(p + offset, 0, 3);
}

// One task of the loops: `n` consecutive rows (1 or kRowBlock) of one adapter's segment, converted to float
// (16-bit activations), shrunk, expanded and added by the task itself, so tasks share nothing and run on any
// thread. A block of kRowBlock rows reads each adapter weight once for all of them; each row's sums run in the
// same order either way, so the result does not depend on the blocking.
template <typename In, typename W>
void lora_rows(const In* x_rows, const W* a, const W* b, In* y_rows, int n, int64_t in, int64_t out, int64_t rank,
               float scale, std::vector<float>& xf, std::vector<float>& t) {
  prefetch_bytes(a, rank * in * sizeof(W));
  prefetch_bytes(b, rank * out * sizeof(W));
  const float* rows_f = nullptr;
  if constexpr (std::is_same_v<In, float>) {
    rows_f = x_rows;  // n contiguous rows of x
  } else {
    xf.resize(static_cast<size_t>(n) * in);
    const ScalarKind kind = std::is_same_v<In, c10::BFloat16> ? ScalarKind::kBFloat16 : ScalarKind::kFloat16;
    for (int g = 0; g < n; ++g) load_row_as_float(x_rows + g * in, kind, xf.data() + g * in, in);
    rows_f = xf.data();
  }
  t.assign(static_cast<size_t>(n) * rank, 0.0f);
  if (n == kRowBlock) {
    shrink_block(rows_f, a, in, rank, t.data());
  } else {
    shrink(rows_f, a, in, rank, t.data());
  }
  float acc[kRowBlock * kColumns];
  for (int64_t o0 = 0; o0 < out; o0 += kColumns) {
    const int64_t o1 = o0 + kColumns < out ? o0 + kColumns : out;
    if (n == kRowBlock) {
      expand_block(t.data(), b, rank, out, o0, o1, acc);
    } else {
      expand(t.data(), b, rank, out, o0, o1, acc);
    }
    for (int g = 0; g < n; ++g) add_scaled(acc + g * kColumns, o1 - o0, scale, y_rows + g * out + o0);
  }
}

// One parallel region over (adapter, row block) tasks: blocks of kRowBlock rows, then single rows for a
// segment's last rows % kRowBlock, so two doctors at B = 1 put one adapter on each thread and B = 8 gives two
// blocks per adapter. In the model the base projection has just run on every thread, so the region starts on
// threads that are still spinning. One task alone (one doctor at B = 1) stays on this thread: splitting its
// columns between the threads measured slower.
template <typename In>
void segmented_lora_loops(at::Tensor& y, const at::Tensor& x, at::TensorList shrinks, at::TensorList expands,
                          at::ArrayRef<double> scales, at::IntArrayRef segments, int64_t rows) {
  const int64_t in = x.size(1), out = y.size(1), adapters = static_cast<int64_t>(shrinks.size());
  int64_t work = 0;
  for (const at::Tensor& a : shrinks) work += rows * a.size(0) * (in + out);
  const int64_t blocks = rows / kRowBlock, per_adapter = blocks + rows % kRowBlock;  // tasks per adapter
  const int64_t tasks = adapters * per_adapter;
  const In* xs = x.data_ptr<In>();
  In* ys = y.data_ptr<In>();
  at::parallel_for(0, tasks, work < kParallelMin ? tasks : 1, [&](int64_t begin, int64_t end) {
    std::vector<float> xf, t;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / per_adapter, k = task % per_adapter, rank = shrinks[i].size(0);
      const int64_t first = k < blocks ? k * kRowBlock : blocks * kRowBlock + (k - blocks);  // within the segment
      const int n = k < blocks ? kRowBlock : 1;
      const int64_t row = segments[i] * rows + first;
      const float scale = static_cast<float>(scales[i]);
      if (shrinks[i].scalar_type() == at::kBFloat16) {  // bfloat16 weights (checked: bfloat16 activations only)
        lora_rows(xs + row * in, reinterpret_cast<const uint16_t*>(shrinks[i].data_ptr()),
                  reinterpret_cast<const uint16_t*>(expands[i].data_ptr()), ys + row * out, n, in, out, rank, scale,
                  xf, t);
      } else {
        lora_rows(xs + row * in, shrinks[i].data_ptr<float>(), expands[i].data_ptr<float>(), ys + row * out, n, in,
                  out, rank, scale, xf, t);
      }
    }
  });
}

void segmented_lora_cpu(at::Tensor y_in, const at::Tensor& x_in, at::TensorList shrink, at::TensorList expand,
                        at::ArrayRef<double> scales, at::IntArrayRef segments, int64_t rows_in) {
  auto [y, x, rows] = as_row_matrices(y_in, x_in, rows_in);
  check_segmented_lora_args(y, x, shrink, expand, scales, segments, rows);
  if (rows == 0 || shrink.empty()) return;
  if (x.scalar_type() == at::kFloat && rows > kLoopRows) {
    segmented_lora_aten(y, x, shrink, expand, scales, segments, rows);
    return;
  }
  switch (x.scalar_type()) {
    case at::kFloat: segmented_lora_loops<float>(y, x, shrink, expand, scales, segments, rows); break;
    case at::kBFloat16: segmented_lora_loops<c10::BFloat16>(y, x, shrink, expand, scales, segments, rows); break;
    default: segmented_lora_loops<c10::Half>(y, x, shrink, expand, scales, segments, rows); break;
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdoctor, CPU, m) {
  m.impl("segmented_lora_", &segmented_lora_cpu);
  m.impl("linear_segmented_lora", &linear_segmented_lora<segmented_lora_cpu>);
}

}  // namespace fastdoctor
