// Depthwise convolution for XLA:CPU: the forward convolution (with a fused bias and activation),
// its adjoint in the input and its adjoint in the kernel, and the decoding step of a causal 1-D
// convolution with its state updated in place, as XLA FFI handlers (jdw.kernels.cpu_depthwise
// registers them).
//
// Every operand is channels-last with up to three spatial dimensions (fewer are given as unit
// dimensions in front): x (N, I0, I1, I2, C), kernel (K0, K1, K2, C) float32, y (N, O0, O1, O2, C).
// The forward and the input adjoint are one "gather" loop: a destination position sums, over the
// kernel taps that reach it, a source position times a tap's weights, along the channels (the
// contiguous, vectorised axis). Which (source, tap) pairs reach a destination is a table per
// spatial dimension:
//
//   forward      y[o] = act(sum_k x[o*s - p + k*d] * w[k] + b)
//   transpose    x[i] = sum_k y[(i + p - k*d) / s] * w[k]        (where s divides it)
//   kernel grad  w[k] = sum_{n, o} x[n, o*s - p + k*d] * y[n, o]
//
// No padded, dilated or strided copy of anything is made and each operand is read once from
// memory:
// - the gather keeps the sums of four neighbouring outputs of one register of channels in
//   registers, loading each weight once for the four, where every tap lies inside the source (the
//   interior); the borders go through the tap tables; with AVX2, the rows of 3x3 kernels at
//   stride 2 over 56 positions or more go a position at a time instead, all of its channels (up to
//   12 registers a block) before the next position, so that the source is read in address order;
// - the kernel gradient sums the products of up to seven taps along a row in registers, loading
//   each position of dy once for them, then adds them to per-worker partial sums (taps x C, in
//   L1/L2), summed at the end;
// - long rows are cut into tiles of positions whose source fits in L1.
// Rows (and, when there are few, segments of rows) are shared out to XLA's intra-op thread pool.
// bfloat16 operands are widened to float32 on load and rounded (to nearest even) on store; sums
// are float32.
//
// The loops (cpu_depthwise_loops.inc) are compiled once per instruction set, for AVX512-BF16,
// AVX-512, AVX2 + FMA and the baseline, each in its own translation unit (cpu_depthwise_<isa>.cc,
// which setup.py compiles in parallel), and the widest one the CPU runs is chosen when the module
// loads (GCC and Clang on x86-64; elsewhere only the baseline copy exists). They use GCC's vector
// extensions (also in Clang), not intrinsics, so the same source serves every width. This file
// holds the tap tables, that choice and the XLA FFI handlers; cpu_depthwise.h what they share.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "xla/ffi/api/ffi.h"
#include "cpu_depthwise.h"
#include "cpu_python.h"

namespace ffi = xla::ffi;

namespace jdw {
namespace {

// --- tap tables ------------------------------------------------------------------------------

Table ForwardTable(const Geometry& g, int dim) {
  Table t;
  t.begin.push_back(0);
  for (int64_t o = 0; o < g.out[dim]; ++o) {
    for (int64_t k = 0; k < g.kernel[dim]; ++k) {
      const int64_t i = o * g.stride[dim] - g.pad[dim] + k * g.dilation[dim];
      if (i >= 0 && i < g.in[dim]) {
        t.source.push_back(i);
        t.tap.push_back(k);
      }
    }
    t.begin.push_back(static_cast<int64_t>(t.source.size()));
  }
  return t;
}

Table TransposeTable(const Geometry& g, int dim) {
  Table t;
  t.begin.push_back(0);
  for (int64_t i = 0; i < g.in[dim]; ++i) {
    for (int64_t k = 0; k < g.kernel[dim]; ++k) {
      const int64_t shifted = i + g.pad[dim] - k * g.dilation[dim];
      if (shifted >= 0 && shifted % g.stride[dim] == 0 && shifted / g.stride[dim] < g.out[dim]) {
        t.source.push_back(shifted / g.stride[dim]);
        t.tap.push_back(k);
      }
    }
    t.begin.push_back(static_cast<int64_t>(t.source.size()));
  }
  return t;
}

#ifdef JDW_MULTIVERSION
// AVX512-BF16's loops: avx512's, with those that store bfloat16, the gather from bfloat16 and the
// bfloat16 kernel gradient taken from the copy that converts with AVX512-BF16 (it differs from
// avx512 only there: its conversion on store, the paired taps of PairSums and the paired outputs of
// SweepRowsPairs; so only those are compiled twice).
Loops Avx512Bf16() {
  Loops loops = kAvx512Loops;
  const Loops& bf16 = kAvx512Bf16Loops;
  loops.name = bf16.name;
  loops.gather_f32_bf16 = bf16.gather_f32_bf16;
  loops.gather_bf16_f32 = bf16.gather_bf16_f32;
  loops.gather_bf16_bf16 = bf16.gather_bf16_bf16;
  loops.kernel_grad_bf16 = bf16.kernel_grad_bf16;
  loops.causal_update_f32_bf16 = bf16.causal_update_f32_bf16;
  loops.causal_update_bf16_bf16 = bf16.causal_update_bf16_bf16;
  return loops;
}
#endif

// The loops of the widest instruction set this CPU runs, at most the one named by the environment
// variable JDW_CPU_INSTRUCTION_SET (CpuInstructionSet in cpu_target.h), chosen once.
const Loops& Chosen() {
  static const Loops loops = [] {
    switch (CpuInstructionSet()) {
#ifdef JDW_MULTIVERSION
      case InstructionSet::kAvx512Bf16:
        return Avx512Bf16();
      case InstructionSet::kAvx512:
        return kAvx512Loops;
      case InstructionSet::kAvx2:
        return kAvx2Loops;
#endif
      default:
        return kBaselineLoops;
    }
  }();
  return loops;
}

// The size of the last-level cache as Linux's sysfs gives it (cpu0's largest), or 32 MiB where it
// does not. (glibc's sysconf(_SC_LEVEL3_CACHE_SIZE) said 320 MiB on a VM with 32 MiB of L3.)
int64_t LastLevelCacheBytes() {
  int64_t largest = 0;
  for (int index = 0; index < 8; ++index) {
    std::ifstream file("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/size");
    int64_t size = 0;
    std::string unit;
    if (!(file >> size)) continue;
    file >> unit;  // "32768K"
    if (unit == "K") size <<= 10;
    if (unit == "M") size <<= 20;
    largest = std::max(largest, size);
  }
  return largest > 0 ? largest : int64_t{32} << 20;
}

// The destination size from which the gather loops store it with non-temporal (streaming) stores:
// an eighth of the last-level cache's (at least 1 MiB), or the environment variable
// JDW_CPU_STREAM_BYTES, read once (the tests set 0: every destination streams). A destination that
// has left the cache before the next operation reads it makes an ordinary store's read of each line
// (to own it) traffic spent for nothing; a streaming store writes the line without reading it.
// Against PyTorch, the forward pass of 112x112x32 (batch 32, 51 MB out) went from 1.13-1.35x its
// time to 0.92-1.01x, of 56x56x144 from 0.92-0.94x to 0.69-0.71x, and the input gradient of
// 112x112x96 of stride 2 (154 MB) from 0.96-1.02x to 0.46-0.61x (two runs each, alternating
// builds). The last-level cache is shared (here, by the figures, with more than our two cores):
// destinations from an eighth of it up were faster streamed. One core, batch 32, bf16 forward ms,
// ordinary stores against streaming ones: 28x28x192 (7x7, 9.6 MB) 6.4-8.1 -> 3.5-4.9, 56x56x96
// (7x7, 19 MB) 10.6-13.5 -> 6.5-6.7, 14x14x672 (5x5, 8.4 MB) 2.7-3.9 -> 1.9-2.1; at batch 16 (4.8
// MB) 28x28x192 2.43 -> 1.58. Against PyTorch on two cores, the 17 layers of MobileNetV2 (float32)
// went from 0.67x its time to 0.58x forward and from 0.57x to 0.47x forward and backward (28x28x192
// forward 0.63x -> 0.31x, 14x14x576 0.86x -> 0.54x), in bfloat16 from 0.87x to 0.75x forward.
// Smaller destinations keep ordinary stores: the next operation finds them in the cache.
int64_t StreamBytes() {
  static const int64_t bytes = [] {
    if (const char* set = std::getenv("JDW_CPU_STREAM_BYTES"); set != nullptr && *set != '\0') {
      return std::max<int64_t>(0, std::atoll(set));
    }
    return std::max<int64_t>(LastLevelCacheBytes() / 8, int64_t{1} << 20);
  }();
  return bytes;
}

// --- FFI handlers ------------------------------------------------------------------------------

// geometry: [N, C, in(3), out(3), kernel(3), stride(3), pad(3), dilation(3)]
Geometry Decode(ffi::Span<const int64_t> values) {
  Geometry g;
  g.batch = values[0];
  g.channels = values[1];
  for (int d = 0; d < 3; ++d) {
    g.in[d] = values[2 + d];
    g.out[d] = values[5 + d];
    g.kernel[d] = values[8 + d];
    g.stride[d] = values[11 + d];
    g.pad[d] = values[14 + d];
    g.dilation[d] = values[17 + d];
  }
  return g;
}

bool IsFloat(ffi::DataType t) { return t == ffi::DataType::F32 || t == ffi::DataType::BF16; }

// A kernel or bias operand as float32: a float32 buffer as it is, a bfloat16 one widened into
// `storage` (a few KiB). The wrappers pass a bfloat16 kernel as it is: under JAX's default (async)
// dispatch an XLA convert in front of the call makes the program more than one thunk, which
// XLA:CPU then runs off the calling thread (a bfloat16 forward pass of 14x14x576, stride 2, batch
// 1: 47-88 -> 16-30 us on the 2-core Zen 4; docs/performance.md).
const float* AsFloat(ffi::AnyBuffer b, std::vector<float>& storage) {
  if (b.element_type() == ffi::DataType::F32) return static_cast<const float*>(b.untyped_data());
  const auto* bits = static_cast<const bf16*>(b.untyped_data());
  storage.resize(b.element_count());
  for (size_t i = 0; i < storage.size(); ++i) storage[i] = Load(bits + i);
  return storage.data();
}

// dst = gather(src, w): the forward convolution (transpose=false, src x, dst y; with the epilogue)
// or its adjoint in the input (transpose=true, src y, dst x).
ffi::Error GatherImpl(bool transpose, ffi::ThreadPool pool, ffi::AnyBuffer src, ffi::AnyBuffer w,
                      ffi::Result<ffi::AnyBuffer> dst, ffi::Span<const int64_t> geometry, const Epilogue& epilogue) {
  if (geometry.size() != 20) return ffi::Error::InvalidArgument("jdw depthwise: the geometry needs 20 integers");
  const Geometry g = Decode(geometry);
  if (!IsFloat(src.element_type()) || !IsFloat(dst->element_type()) || !IsFloat(w.element_type())) {
    return ffi::Error::InvalidArgument("jdw depthwise: operands must be float32 or bfloat16");
  }
  Table tables[3];
  for (int d = 0; d < 3; ++d) tables[d] = transpose ? TransposeTable(g, d) : ForwardTable(g, d);
  const Loops& loops = Chosen();
  const bool src_f32 = src.element_type() == ffi::DataType::F32;
  const bool dst_f32 = dst->element_type() == ffi::DataType::F32;
  std::vector<float> wide;
  const float* weights = AsFloat(w, wide);
  Epilogue e = epilogue;
  e.stream = static_cast<int64_t>(dst->size_bytes()) >= StreamBytes();
  if (src_f32 && dst_f32) {
    loops.gather_f32_f32(static_cast<const float*>(src.untyped_data()), weights,
                         static_cast<float*>(dst->untyped_data()), g, tables, transpose, e, pool);
  } else if (src_f32) {
    loops.gather_f32_bf16(static_cast<const float*>(src.untyped_data()), weights,
                          static_cast<bf16*>(dst->untyped_data()), g, tables, transpose, e, pool);
  } else if (dst_f32) {
    loops.gather_bf16_f32(static_cast<const bf16*>(src.untyped_data()), weights,
                          static_cast<float*>(dst->untyped_data()), g, tables, transpose, e, pool);
  } else {
    loops.gather_bf16_bf16(static_cast<const bf16*>(src.untyped_data()), weights,
                           static_cast<bf16*>(dst->untyped_data()), g, tables, transpose, e, pool);
  }
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer bias,
                       ffi::Result<ffi::AnyBuffer> y, ffi::Span<const int64_t> geometry, int64_t activation) {
  if (activation < 0 || activation > static_cast<int64_t>(Activation::kSilu)) {
    return ffi::Error::InvalidArgument("jdw depthwise: unknown activation code");
  }
  if (!IsFloat(bias.element_type())) return ffi::Error::InvalidArgument("jdw depthwise: the bias must be float32 or bfloat16");
  // An empty bias is none.
  std::vector<float> wide_bias;
  const Epilogue e{bias.element_count() == 0 ? nullptr : AsFloat(bias, wide_bias), static_cast<Activation>(activation)};
  return GatherImpl(false, pool, x, w, y, geometry, e);
}

ffi::Error TransposeImpl(ffi::ThreadPool pool, ffi::AnyBuffer dy, ffi::AnyBuffer w,
                         ffi::Result<ffi::AnyBuffer> dx, ffi::Span<const int64_t> geometry) {
  return GatherImpl(true, pool, dy, w, dx, geometry, Epilogue{nullptr, Activation::kIdentity});
}

ffi::Error KernelGradImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                          ffi::Span<const int64_t> geometry) {
  if (geometry.size() != 20) return ffi::Error::InvalidArgument("jdw depthwise: the geometry needs 20 integers");
  const Geometry g = Decode(geometry);
  if (x.element_type() != dy.element_type() || !IsFloat(x.element_type()) || !IsFloat(dw->element_type())) {
    return ffi::Error::InvalidArgument("jdw depthwise: kernel gradient operands must both be float32 or bfloat16");
  }
  Table tables[3];
  for (int d = 0; d < 3; ++d) tables[d] = ForwardTable(g, d);
  const Loops& loops = Chosen();
  // The sums are float32; a bfloat16 result is rounded from them here (a few KiB).
  const bool f32 = dw->element_type() == ffi::DataType::F32;
  std::vector<float> sums(f32 ? 0 : dw->element_count());
  float* out = f32 ? static_cast<float*>(dw->untyped_data()) : sums.data();
  if (x.element_type() == ffi::DataType::F32) {
    loops.kernel_grad_f32(static_cast<const float*>(x.untyped_data()), static_cast<const float*>(dy.untyped_data()),
                          out, g, tables, pool);
  } else {
    loops.kernel_grad_bf16(static_cast<const bf16*>(x.untyped_data()), static_cast<const bf16*>(dy.untyped_data()),
                           out, g, tables, pool);
  }
  auto* rounded = static_cast<bf16*>(dw->untyped_data());
  for (size_t i = 0; i < sums.size(); ++i) Store(rounded + i, sums[i]);
  return ffi::Error::Success();
}

// --- the decoding step of a causal depthwise 1-D convolution -----------------------------------
//
// One token per row against a state of S = (W - 1) * d past tokens, updated in place (the state
// operand and result are one buffer, aliased by jdw.kernels.cpu_depthwise.causal_update):
//
//   y[n, c] = act(sum_{j < W-1} state[n, slot(j), c] * w[g, j, c] + x[n, c] * w[g, W-1, c] + b[g, c])
//
// with g = n / (N / G) the row's kernel (G kernels: layers stacked by vmap). In order (no
// positions), slot(j) = j*d and the state then shifts by one token (x enters at the end): S reads
// and S writes per channel. As a ring buffer (positions p[n]: the slot of the oldest token),
// slot(j) = (p + j*d) mod S and x overwrites slot p: S reads and one write per channel (with the
// token and the output: as many bytes as an elementwise pass over the state at S = 3, fewer above).

ffi::Error CausalUpdateImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer state_in, ffi::AnyBuffer w,
                            ffi::AnyBuffer bias, ffi::Buffer<ffi::S32> position, ffi::Result<ffi::AnyBuffer> y,
                            ffi::Result<ffi::AnyBuffer> state, int64_t dilation, int64_t activation) {
  // x (..., D), state (..., S, D), w (..., W, D) with G kernels (their leading dimensions are x's
  // first ones: vmap stacks), bias (G * D) or empty, position (N) or empty (the state in order).
  const auto x_dims = x.dimensions();
  const auto s_dims = state_in.dimensions();
  const auto w_dims = w.dimensions();
  if (x_dims.size() < 1 || s_dims.size() < 2 || w_dims.size() < 2) {
    return ffi::Error::InvalidArgument("jdw causal update: x, state and kernel need 1, 2 and 2 dimensions at least");
  }
  const int64_t D = x_dims.back(), S = s_dims[s_dims.size() - 2], W = w_dims[w_dims.size() - 2];
  if (D == 0 || s_dims.back() != D || w_dims.back() != D) {
    return ffi::Error::InvalidArgument("jdw causal update: x, state and kernel must share their channels");
  }
  const int64_t N = static_cast<int64_t>(x.element_count()) / D;
  const int64_t G = static_cast<int64_t>(w.element_count()) / (W * D);
  if (W < 2 || dilation < 1 || S != (W - 1) * dilation || static_cast<int64_t>(state_in.element_count()) != N * S * D) {
    return ffi::Error::InvalidArgument("jdw causal update: the state must hold (W - 1) * dilation tokens per row");
  }
  if (G == 0 || N % G != 0 || (bias.element_count() != 0 && static_cast<int64_t>(bias.element_count()) != G * D) ||
      (position.element_count() != 0 && static_cast<int64_t>(position.element_count()) != N)) {
    return ffi::Error::InvalidArgument("jdw causal update: kernels, bias or positions do not match the rows");
  }
  if (activation < 0 || activation > static_cast<int64_t>(Activation::kSilu)) {
    return ffi::Error::InvalidArgument("jdw causal update: unknown activation code");
  }
  if (x.element_type() != state_in.element_type() || state->element_type() != x.element_type() ||
      !IsFloat(x.element_type()) || !IsFloat(y->element_type())) {
    return ffi::Error::InvalidArgument("jdw causal update: x and state must share float32 or bfloat16");
  }
  if (!IsFloat(w.element_type()) || !IsFloat(bias.element_type())) {
    return ffi::Error::InvalidArgument("jdw causal update: the kernel and bias must be float32 or bfloat16");
  }
  std::vector<float> wide_w, wide_bias;
  const float* wf = AsFloat(w, wide_w);
  const float* b = bias.element_count() == 0 ? nullptr : AsFloat(bias, wide_bias);
  const int32_t* p = position.element_count() == 0 ? nullptr : position.typed_data();
  const auto act = static_cast<Activation>(activation);
  const Loops& loops = Chosen();
  const bool y32 = y->element_type() == ffi::DataType::F32;
  if (x.element_type() == ffi::DataType::F32) {
    const auto* xs = static_cast<const float*>(x.untyped_data());
    const auto* si = static_cast<const float*>(state_in.untyped_data());
    auto* so = static_cast<float*>(state->untyped_data());
    if (y32) {
      loops.causal_update_f32_f32(xs, si, so, wf, b, p, static_cast<float*>(y->untyped_data()), N, G, S, W,
                                  dilation, D, act, pool);
    } else {
      loops.causal_update_f32_bf16(xs, si, so, wf, b, p, static_cast<bf16*>(y->untyped_data()), N, G, S,
                                   W, dilation, D, act, pool);
    }
  } else {
    const auto* xs = static_cast<const bf16*>(x.untyped_data());
    const auto* si = static_cast<const bf16*>(state_in.untyped_data());
    auto* so = static_cast<bf16*>(state->untyped_data());
    if (y32) {
      loops.causal_update_bf16_f32(xs, si, so, wf, b, p, static_cast<float*>(y->untyped_data()), N, G, S,
                                   W, dilation, D, act, pool);
    } else {
      loops.causal_update_bf16_bf16(xs, si, so, wf, b, p, static_cast<bf16*>(y->untyped_data()), N, G, S,
                                    W, dilation, D, act, pool);
    }
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jdw

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdwDepthwiseForward, jdw::ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("geometry")
                                  .Attr<int64_t>("activation"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdwDepthwiseTranspose, jdw::TransposeImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("geometry"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdwDepthwiseKernelGrad, jdw::KernelGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("geometry"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdwCausalUpdate, jdw::CausalUpdateImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("dilation")
                                  .Attr<int64_t>("activation"));

// --- Python module: the handlers as capsules, and the instruction set chosen ----------------------

static PyObject* Handlers(PyObject*, PyObject*) {
  return jdw::HandlerDict({
      {"forward", reinterpret_cast<void*>(JdwDepthwiseForward)},
      {"transpose", reinterpret_cast<void*>(JdwDepthwiseTranspose)},
      {"kernel_grad", reinterpret_cast<void*>(JdwDepthwiseKernelGrad)},
      {"causal_update", reinterpret_cast<void*>(JdwCausalUpdate)},
  });
}

static PyObject* PyInstructionSet(PyObject*, PyObject*) { return PyUnicode_FromString(jdw::Chosen().name); }

static PyObject* StreamBytes(PyObject*, PyObject*) { return PyLong_FromLongLong(jdw::StreamBytes()); }

static PyMethodDef kMethods[] = {
    {"handlers", Handlers, METH_NOARGS, "The XLA FFI handlers, by name, as PyCapsules."},
    {"instruction_set", PyInstructionSet, METH_NOARGS, "The instruction set the loops run with on this CPU."},
    {"stream_bytes", StreamBytes, METH_NOARGS, "The destination size from which the loops store non-temporally."},
    {nullptr, nullptr, 0, nullptr},
};

static PyModuleDef kModule = {
    PyModuleDef_HEAD_INIT, "_cpu_depthwise", "jdw's depthwise-convolution loops for XLA:CPU (XLA FFI handlers).", -1,
    kMethods,
};

PyMODINIT_FUNC PyInit__cpu_depthwise(void) { return PyModule_Create(&kModule); }
