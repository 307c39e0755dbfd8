// Per-channel sums of batch norm for XLA:CPU, as XLA FFI handlers (jdw.kernels.cpu_batch_norm
// registers them): the statistics of the forward pass and the two sums of the backward pass, each
// in one pass over channels-last operands seen as (rows, C), float32 or bfloat16:
//
//   sums       s[c] = sum_r x[r, c]              q[c] = sum_r x[r, c]^2
//   grad sums  s[c] = sum_r g[r, c]              q[c] = sum_r g[r, c] x[r, c]
//              with g = dy * act'(a[c] x + b[c]), act the identity, relu or relu6 (jax.nn's
//              derivatives: 1 on u > 0 for relu, on 0 < u < 6 for relu6, else 0)
//
// XLA:CPU computes them as separate reductions, and the backward pass's from a materialised g, so
// x is read twice in the forward pass, and x, dy and g three times between them in the backward
// pass. Rows are summed in float32 blocks of kBlockRows, the blocks in double. Chunks of rows are
// shared out to XLA's intra-op thread pool, each with its own partial sums, added at the end.
// The loops are compiled for AVX2 and for the baseline, and the CPU's widest runs (SumRows).

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_parallel.h"
#include "cpu_python.h"
#include "cpu_target.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jdw {
namespace {

using bf16 = uint16_t;  // bfloat16 bits

inline float Widen(float v) { return v; }
inline float Widen(bf16 v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// The activations whose derivative the backward sums apply (codes as in cpu_batch_norm.py).
enum class Derivative : int64_t { kIdentity = 0, kRelu = 1, kRelu6 = 2 };

constexpr int64_t kBlockRows = 64;

// Rows taken together where rows are short: each channel's sums of kUnrollRows rows, added
// pairwise, go into its running sums at once. One row at a time, s[c] and q[c] go through memory
// on every row, and each row's adds wait for the last row's stores to reach the loads (store-to-load
// forwarding: a latency per row, whatever C is): over rows of a few registers that wait is most of
// the loop. Over wider rows the registers of one row are enough independent work, and four rows
// at a time made the gradient sums slower (more live registers). So rows of at most kUnrolledFloats
// floats of terms (C for the sums; the gradient sums' 2 C, x and dy) are unrolled. On a Zen 3 (AVX2,
// float32, two threads, median of 300 calls, three runs alternating the builds, us, one row ->
// four): sums of 65536x16 174-200 -> 89-120, 65536x32 171-220 -> 97-141, relu6 gradient sums of
// 65536x16 256-278 -> 110-235; and, unrolled, 65536x96's gradient sums 1153-1654 -> 1715-2681.
constexpr int64_t kUnrollRows = 4;
constexpr int64_t kUnrolledFloats = 32;

// The terms row r of x (and dy) adds to channel c's two sums.
template <typename T, bool kGrad, Derivative kD>
JDW_INLINE void Terms(const T* xr, const T* dr, const float* a, const float* b, int64_t c, float& ts, float& tq) {
  const float v = Widen(xr[c]);
  if constexpr (!kGrad) {
    ts = v;
    tq = v * v;
  } else {
    float g = Widen(dr[c]);
    if constexpr (kD != Derivative::kIdentity) {
      const float u = a[c] * v + b[c];
      const bool live = kD == Derivative::kRelu ? u > 0.0f : (u > 0.0f && u < 6.0f);
      g = live ? g : 0.0f;
    }
    ts = g;
    tq = g * v;
  }
}

// Adds the sums of rows [r0, r1) to s_out and q_out (double, C each); s and q are float32 scratch.
// Always inlined into SumRowsAvx2 and SumRowsBaseline, which GCC vectorises for their targets.
template <typename T, bool kGrad, Derivative kD>
JDW_INLINE void SumRowsBody(const T* __restrict x, const T* __restrict dy, const float* __restrict a,
                            const float* __restrict b, int64_t r0, int64_t r1, int64_t C, double* __restrict s_out,
                            double* __restrict q_out, float* __restrict s, float* __restrict q) {
  static_assert(kUnrollRows == 4, "the pairwise sums below take four rows");
  const bool unroll = (kGrad ? 2 : 1) * C <= kUnrolledFloats;
  for (int64_t r = r0; r < r1; r += kBlockRows) {
    std::fill(s, s + C, 0.0f);
    std::fill(q, q + C, 0.0f);
    const int64_t end = std::min(r1, r + kBlockRows);
    int64_t i = r;
    for (; unroll && i + kUnrollRows <= end; i += kUnrollRows) {
      const T* xr = x + i * C;
      const T* dr = kGrad ? dy + i * C : nullptr;
      for (int64_t c = 0; c < C; ++c) {
        float ts[kUnrollRows], tq[kUnrollRows];
#pragma GCC unroll 4
        for (int64_t u = 0; u < kUnrollRows; ++u) {
          Terms<T, kGrad, kD>(xr + u * C, kGrad ? dr + u * C : nullptr, a, b, c, ts[u], tq[u]);
        }
        s[c] += (ts[0] + ts[1]) + (ts[2] + ts[3]);
        q[c] += (tq[0] + tq[1]) + (tq[2] + tq[3]);
      }
    }
    for (; i < end; ++i) {
      const T* xr = x + i * C;
      const T* dr = kGrad ? dy + i * C : nullptr;
      for (int64_t c = 0; c < C; ++c) {
        float ts, tq;
        Terms<T, kGrad, kD>(xr, dr, a, b, c, ts, tq);
        s[c] += ts;
        q[c] += tq;
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      s_out[c] += s[c];
      q_out[c] += q[c];
    }
  }
}

// The rows' sums compiled for AVX2 and FMA (8 lanes) and for the baseline (SSE2 on x86-64: 4
// lanes); each lane sums its channel's rows in the same order either way (AVX2's copy with fused
// multiply-adds, so the last bits can differ). On a Zen 3 (two cores, float32, best of 50 calls,
// two runs alternating the builds, us, baseline -> AVX2), the relu6 gradient sums of (rows, C)
// 65536x96 1474-1881 -> 1045-1248, 16384x144 538-764 -> 250-288, 4096x384 334-700 -> 175-283,
// 1024x960 269-474 -> 129-139, and the sums of 65536x96 691-1122 -> 534-756, 1024x960 134-211 ->
// 79-82; only the sums of 16 channels were slower (158-159 -> 181-189, where the gradient sums of
// the same went 295-459 -> 208-282). In the training benchmark's MobileNetV2 step
// (examples/bench_training.py: batch 64, 32x32) the sums took 14% of the CPU samples (perf) with
// the baseline copy and 11% with AVX2's.
template <typename T, bool kGrad, Derivative kD>
void SumRowsBaseline(const T* x, const T* dy, const float* a, const float* b, int64_t r0, int64_t r1, int64_t C,
                     double* s_out, double* q_out, float* s, float* q) {
  SumRowsBody<T, kGrad, kD>(x, dy, a, b, r0, r1, C, s_out, q_out, s, q);
}

#ifdef JDW_MULTIVERSION
template <typename T, bool kGrad, Derivative kD>
__attribute__((target("avx2,fma"))) void SumRowsAvx2(const T* x, const T* dy, const float* a, const float* b,
                                                     int64_t r0, int64_t r1, int64_t C, double* s_out,
                                                     double* q_out, float* s, float* q) {
  SumRowsBody<T, kGrad, kD>(x, dy, a, b, r0, r1, C, s_out, q_out, s, q);
}
#endif

// Whether the sums run the AVX2 copy: where the CPU has AVX2 and FMA, unless the environment
// variable JDW_CPU_INSTRUCTION_SET caps the choice below it (CpuInstructionSet in cpu_target.h; the
// tests run the baseline copy that way).
bool UseAvx2() { return static_cast<int>(CpuInstructionSet()) >= static_cast<int>(InstructionSet::kAvx2); }

template <typename T, bool kGrad, Derivative kD>
void SumRows(const T* x, const T* dy, const float* a, const float* b, int64_t r0, int64_t r1, int64_t C,
             double* s_out, double* q_out, float* s, float* q) {
#ifdef JDW_MULTIVERSION
  if (UseAvx2()) return SumRowsAvx2<T, kGrad, kD>(x, dy, a, b, r0, r1, C, s_out, q_out, s, q);
#endif
  SumRowsBaseline<T, kGrad, kD>(x, dy, a, b, r0, r1, C, s_out, q_out, s, q);
}

template <typename T, bool kGrad, Derivative kD>
void Sums(ffi::ThreadPool& pool, const T* x, const T* dy, const float* a, const float* b, int64_t rows, int64_t C,
          float* s_out, float* q_out) {
  const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
  const int64_t chunks = std::max<int64_t>(1, std::min(Workers(pool), blocks));
  std::vector<double> partial(static_cast<size_t>(chunks * 2 * C), 0.0);
  ParallelFor(pool, chunks, [&](int64_t k) {
    std::vector<float> scratch(static_cast<size_t>(2 * C));
    const int64_t r0 = blocks * k / chunks * kBlockRows, r1 = std::min(rows, blocks * (k + 1) / chunks * kBlockRows);
    double* mine = partial.data() + k * 2 * C;
    SumRows<T, kGrad, kD>(x, dy, a, b, r0, r1, C, mine, mine + C, scratch.data(), scratch.data() + C);
  });
  for (int64_t c = 0; c < C; ++c) {
    double s = 0.0, q = 0.0;
    for (int64_t k = 0; k < chunks; ++k) {
      s += partial[k * 2 * C + c];
      q += partial[k * 2 * C + C + c];
    }
    s_out[c] = static_cast<float>(s);
    q_out[c] = static_cast<float>(q);
  }
}

bool IsFloat(ffi::DataType t) { return t == ffi::DataType::F32 || t == ffi::DataType::BF16; }

// (rows, C) of a channels-last operand; C is 0 for a scalar.
void RowsAndChannels(const ffi::AnyBuffer& x, int64_t& rows, int64_t& C) {
  const auto dims = x.dimensions();
  C = dims.size() == 0 ? 0 : dims.back();
  rows = C == 0 ? 0 : static_cast<int64_t>(x.element_count()) / C;
}

ffi::Error SumsImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::Result<ffi::Buffer<ffi::F32>> s,
                    ffi::Result<ffi::Buffer<ffi::F32>> q) {
  if (!IsFloat(x.element_type())) return ffi::Error::InvalidArgument("jdw batch-norm sums: x must be f32 or bf16");
  int64_t rows, C;
  RowsAndChannels(x, rows, C);
  if (static_cast<int64_t>(s->element_count()) != C || static_cast<int64_t>(q->element_count()) != C) {
    return ffi::Error::InvalidArgument("jdw batch-norm sums: the results must have x's channels");
  }
  float* so = s->typed_data();
  float* qo = q->typed_data();
  if (x.element_type() == ffi::DataType::F32) {
    Sums<float, false, Derivative::kIdentity>(pool, x.typed_data<float>(), nullptr, nullptr, nullptr, rows, C, so, qo);
  } else {
    Sums<bf16, false, Derivative::kIdentity>(pool, reinterpret_cast<const bf16*>(x.untyped_data()), nullptr, nullptr,
                                            nullptr, rows, C, so, qo);
  }
  return ffi::Error::Success();
}

template <typename T>
void GradSums(ffi::ThreadPool& pool, const T* x, const T* dy, const float* a, const float* b, int64_t rows, int64_t C,
              Derivative d, float* so, float* qo) {
  switch (d) {
    case Derivative::kIdentity:
      return Sums<T, true, Derivative::kIdentity>(pool, x, dy, a, b, rows, C, so, qo);
    case Derivative::kRelu:
      return Sums<T, true, Derivative::kRelu>(pool, x, dy, a, b, rows, C, so, qo);
    case Derivative::kRelu6:
      return Sums<T, true, Derivative::kRelu6>(pool, x, dy, a, b, rows, C, so, qo);
  }
}

ffi::Error GradSumsImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Buffer<ffi::F32> a,
                        ffi::Buffer<ffi::F32> b, ffi::Result<ffi::Buffer<ffi::F32>> s,
                        ffi::Result<ffi::Buffer<ffi::F32>> q, int64_t activation) {
  if (!IsFloat(x.element_type()) || x.element_type() != dy.element_type()) {
    return ffi::Error::InvalidArgument("jdw batch-norm grad sums: x and dy must both be f32 or both bf16");
  }
  if (activation < 0 || activation > static_cast<int64_t>(Derivative::kRelu6)) {
    return ffi::Error::InvalidArgument("jdw batch-norm grad sums: unknown activation code");
  }
  int64_t rows, C;
  RowsAndChannels(x, rows, C);
  if (dy.element_count() != x.element_count() || static_cast<int64_t>(a.element_count()) != C ||
      static_cast<int64_t>(b.element_count()) != C || static_cast<int64_t>(s->element_count()) != C ||
      static_cast<int64_t>(q->element_count()) != C) {
    return ffi::Error::InvalidArgument("jdw batch-norm grad sums: operands of mismatched shapes");
  }
  const auto d = static_cast<Derivative>(activation);
  if (x.element_type() == ffi::DataType::F32) {
    GradSums<float>(pool, x.typed_data<float>(), dy.typed_data<float>(), a.typed_data(), b.typed_data(), rows, C, d,
                    s->typed_data(), q->typed_data());
  } else {
    GradSums<bf16>(pool, reinterpret_cast<const bf16*>(x.untyped_data()), reinterpret_cast<const bf16*>(dy.untyped_data()),
                   a.typed_data(), b.typed_data(), rows, C, d, s->typed_data(), q->typed_data());
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jdw

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdwBatchNormSums, jdw::SumsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdwBatchNormGradSums, jdw::GradSumsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("activation"));

// --- Python module: the handlers as capsules ----------------------------------------------------

static PyObject* Handlers(PyObject*, PyObject*) {
  return jdw::HandlerDict({
      {"sums", reinterpret_cast<void*>(JdwBatchNormSums)},
      {"grad_sums", reinterpret_cast<void*>(JdwBatchNormGradSums)},
  });
}

static PyObject* PyInstructionSet(PyObject*, PyObject*) {
  return PyUnicode_FromString(
      jdw::InstructionSetName(jdw::UseAvx2() ? jdw::InstructionSet::kAvx2 : jdw::InstructionSet::kBaseline));
}

static PyMethodDef kMethods[] = {
    {"handlers", Handlers, METH_NOARGS, "The XLA FFI handlers, by name, as PyCapsules."},
    {"instruction_set", PyInstructionSet, METH_NOARGS, "The instruction set the sums run with on this CPU."},
    {nullptr, nullptr, 0, nullptr},
};

static PyModuleDef kModule = {
    PyModuleDef_HEAD_INIT, "_cpu_batch_norm", "jdw's batch-norm sums for XLA:CPU (XLA FFI handlers).", -1, kMethods,
};

PyMODINIT_FUNC PyInit__cpu_batch_norm(void) { return PyModule_Create(&kModule); }
