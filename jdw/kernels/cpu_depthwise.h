// What the translation units of jdw.kernels._cpu_depthwise share: the geometry of a convolution,
// the tap tables' type, the fused epilogue and the table of loops each instruction set provides
// (cpu_depthwise_<isa>.cc compiles cpu_depthwise_loops.inc for one instruction set; cpu_depthwise.cc
// chooses among them and holds the XLA FFI handlers). One translation unit per instruction set lets
// the build compile them in parallel (setup.py).

#ifndef JDW_KERNELS_CPU_DEPTHWISE_H_
#define JDW_KERNELS_CPU_DEPTHWISE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"
#include "cpu_parallel.h"
#include "cpu_target.h"

namespace jdw {

// --- geometry ---------------------------------------------------------------------------------

struct Geometry {
  int64_t batch, channels;
  int64_t in[3], out[3], kernel[3], stride[3], pad[3], dilation[3];

  int64_t taps() const { return kernel[0] * kernel[1] * kernel[2]; }
};

// The (source position, tap) pairs that reach each destination position along one dimension,
// in compressed rows: pairs[begin[p] .. begin[p + 1]).
struct Table {
  std::vector<int64_t> begin;
  std::vector<int64_t> source, tap;

  int64_t count(int64_t p) const { return begin[p + 1] - begin[p]; }
};

// --- the fused epilogue: activation(y + bias), then the store ------------------------------------

enum class Activation : int64_t { kIdentity = 0, kRelu, kRelu6, kHardSigmoid, kHardSwish, kSilu };

struct Epilogue {
  const float* bias;  // nullptr: none
  Activation activation;
  // Non-temporal stores of the destination's whole registers (where aligned; see StreamBytes).
  bool stream = false;
};

using bf16 = uint16_t;  // bfloat16 bits

// --- the loops of one instruction set ----------------------------------------------------------

// The decoding step's loops (see CausalUpdateImpl): x, state in, state out, kernels, bias, positions, y,
// then N rows, G kernels, S, W, dilation, D channels.
template <typename T, typename Y>
using CausalUpdateFn = void (*)(const T*, const T*, T*, const float*, const float*, const int32_t*, Y*, int64_t,
                                int64_t, int64_t, int64_t, int64_t, int64_t, Activation, ffi::ThreadPool&);

struct Loops {
  const char* name;
  void (*gather_f32_f32)(const float*, const float*, float*, const Geometry&, const Table*, bool, const Epilogue&,
                         ffi::ThreadPool&);
  void (*gather_f32_bf16)(const float*, const float*, bf16*, const Geometry&, const Table*, bool, const Epilogue&,
                          ffi::ThreadPool&);
  void (*gather_bf16_f32)(const bf16*, const float*, float*, const Geometry&, const Table*, bool, const Epilogue&,
                          ffi::ThreadPool&);
  void (*gather_bf16_bf16)(const bf16*, const float*, bf16*, const Geometry&, const Table*, bool, const Epilogue&,
                           ffi::ThreadPool&);
  void (*kernel_grad_f32)(const float*, const float*, float*, const Geometry&, const Table*, ffi::ThreadPool&);
  void (*kernel_grad_bf16)(const bf16*, const bf16*, float*, const Geometry&, const Table*, ffi::ThreadPool&);
  CausalUpdateFn<float, float> causal_update_f32_f32;
  CausalUpdateFn<float, bf16> causal_update_f32_bf16;
  CausalUpdateFn<bf16, float> causal_update_bf16_f32;
  CausalUpdateFn<bf16, bf16> causal_update_bf16_bf16;
};

// The loops of each instruction set (cpu_depthwise_<isa>.cc). kAvx512Bf16Loops holds only those
// that differ from avx512's (the bfloat16 stores, the gather from bfloat16 and the bfloat16 kernel
// gradient); the rest are null (see Chosen in cpu_depthwise.cc).
extern const Loops kAvx512Bf16Loops, kAvx512Loops, kAvx2Loops;
extern const Loops kBaselineLoops;

// The whole table of one instruction set's namespace (cpu_depthwise_<isa>.cc, after the loops).
#define JDW_LOOPS_OF(isa)                                                                               \
  Loops {                                                                                               \
    #isa, isa::Gather<float, float>, isa::Gather<float, bf16>, isa::Gather<bf16, float>,                \
        isa::Gather<bf16, bf16>, isa::KernelGrad<float>, isa::KernelGrad<bf16>,                         \
        isa::CausalUpdate<float, float>, isa::CausalUpdate<float, bf16>, isa::CausalUpdate<bf16, float>, \
        isa::CausalUpdate<bf16, bf16>                                                                   \
  }

namespace {

// --- work sharing (ParallelFor and Workers: cpu_parallel.h) ----------------------------------

// The destination as work items: every row, each cut into `segments` runs of positions along its
// last dimension when there are fewer rows than chunks (one long sequence: a 1-D convolution of
// batch 1 is one row).
struct Split {
  int64_t rows, segments, width;

  static Split Of(ffi::ThreadPool& pool, int64_t rows, int64_t width) {
    const int64_t wanted = (Workers(pool) + rows - 1) / rows;
    return {rows, std::max<int64_t>(1, std::min(wanted, width / 16)), width};
  }
  int64_t items() const { return rows * segments; }
  int64_t begin(int64_t item) const { return width * (item % segments) / segments; }
  int64_t end(int64_t item) const { return width * (item % segments + 1) / segments; }
};

// --- element access --------------------------------------------------------------------------

inline float Load(const float* p) { return *p; }
inline float Load(const bf16* p) {
  const uint32_t bits = static_cast<uint32_t>(*p) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline void Store(float* p, float v) { *p = v; }
inline void Store(bf16* p, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  const uint32_t rounded = bits + 0x7FFFu + ((bits >> 16) & 1u);
  *p = static_cast<bf16>(v != v ? ((bits >> 16) | 0x40u) : (rounded >> 16));  // NaN stays NaN
}

// --- the fused epilogue, one element -----------------------------------------------------------

inline float ApplyOne(const Epilogue& e, float z, int64_t c) {
  if (e.bias != nullptr) z += e.bias[c];
  switch (e.activation) {
    case Activation::kIdentity:
      return z;
    case Activation::kRelu:
      return std::max(z, 0.0f);
    case Activation::kRelu6:
      return std::min(std::max(z, 0.0f), 6.0f);
    case Activation::kHardSigmoid:
      return std::min(std::max(z + 3.0f, 0.0f), 6.0f) / 6.0f;
    case Activation::kHardSwish:
      return z * std::min(std::max(z + 3.0f, 0.0f), 6.0f) / 6.0f;
    case Activation::kSilu:
      return z / (1.0f + std::exp(-z));
  }
  return z;
}

}  // namespace
}  // namespace jdw

#endif  // JDW_KERNELS_CPU_DEPTHWISE_H_
