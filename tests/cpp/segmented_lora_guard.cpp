// Bounds check of the CPU LoRA loops as compiled (-O3, with their AVX-512 / AVX2 clones): every read buffer ends
// exactly at a PROT_NONE page, so a load past its end faults. Built and run by tests/test_segmented_lora_bounds.py.
// (GCC 12's AVX-512 vectoriser once turned the 4-row shrink into loads past the last row; the results were right,
// the reads were not, and it crashed only when a buffer ended at a page.) Also checks that a row's sums are the
// same to the bit in a block of 4 rows and alone.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "cpu/segmented_lora_cpu.cpp"

namespace {

template <typename T>
T* at_page_end(size_t n) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t bytes = n * sizeof(T), span = (bytes + page - 1) / page * page;
  char* base = static_cast<char*>(
      mmap(nullptr, span + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (base == MAP_FAILED || mprotect(base + span, page, PROT_NONE) != 0) {
    std::perror("mmap");
    std::exit(2);
  }
  return reinterpret_cast<T*>(base + span - bytes);
}

template <typename W>
W weight(int64_t i) {  // small values, exact in bf16
  const float f = static_cast<float>((i * 7) % 13 - 6) / 8.0f;
  if constexpr (sizeof(W) == 2) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    return static_cast<W>(bits >> 16);
  } else {
    return f;
  }
}

template <typename W>
int check(int64_t in, int64_t out, int64_t rank) {
  using namespace fastdoctor;
  constexpr int G = kRowBlock;
  float* x = at_page_end<float>(G * in);
  W* a = at_page_end<W>(rank * in);
  W* b = at_page_end<W>(rank * out);
  for (int64_t i = 0; i < G * in; ++i) x[i] = static_cast<float>(i % 11) / 4.0f - 1.0f;
  for (int64_t i = 0; i < rank * in; ++i) a[i] = weight<W>(i);
  for (int64_t i = 0; i < rank * out; ++i) b[i] = weight<W>(i + 3);
  float* t_block = at_page_end<float>(G * rank);
  float* t_row = at_page_end<float>(rank);
  shrink_block(x, a, in, rank, t_block);
  for (int g = 0; g < G; ++g) {
    shrink(x + g * in, a, in, rank, t_row);
    if (std::memcmp(t_row, t_block + g * rank, rank * sizeof(float)) != 0) {
      std::printf("FAIL shrink row %d differs in a block: in=%ld rank=%ld\n", g, (long)in, (long)rank);
      return 1;
    }
  }
  float acc_block[G * kColumns], acc_row[kColumns];
  for (int64_t o0 = 0; o0 < out; o0 += kColumns) {
    const int64_t o1 = o0 + kColumns < out ? o0 + kColumns : out;
    expand_block(t_block, b, rank, out, o0, o1, acc_block);
    for (int g = 0; g < G; ++g) {
      expand(t_block + g * rank, b, rank, out, o0, o1, acc_row);
      if (std::memcmp(acc_row, acc_block + g * kColumns, (o1 - o0) * sizeof(float)) != 0) {
        std::printf("FAIL expand row %d differs in a block: out=%ld rank=%ld\n", g, (long)out, (long)rank);
        return 1;
      }
    }
  }
  std::printf("ok %s in=%ld out=%ld rank=%ld\n", sizeof(W) == 2 ? "bf16" : "fp32", (long)in, (long)out, (long)rank);
  return 0;
}

}  // namespace

int main() {
  int failures = 0;
  const int64_t widths[][2] = {{576, 576}, {576, 192}, {576, 1536}, {1536, 576}, {64, 64}, {70, 300}, {77, 9}, {8, 1}};
  for (const auto& w : widths)
    for (int64_t rank : {1, 3, 8, 16}) failures += check<float>(w[0], w[1], rank) + check<uint16_t>(w[0], w[1], rank);
  return failures == 0 ? 0 : 1;
}
