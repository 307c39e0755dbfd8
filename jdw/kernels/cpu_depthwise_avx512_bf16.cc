// jdw's depthwise loops (cpu_depthwise_loops.inc) for AVX512-BF16: only those that differ from
// avx512's, the others null (Avx512Bf16 in cpu_depthwise.cc combines the two).

#include "cpu_depthwise.h"

#ifdef JDW_MULTIVERSION
#define JDW_ISA avx512_bf16
#define JDW_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")))
#define JDW_VECTOR_BYTES 64
#define JDW_AVX512_BF16 1
#include "cpu_depthwise_loops.inc"

namespace jdw {
const Loops kAvx512Bf16Loops = {"avx512_bf16",
                                nullptr,
                                avx512_bf16::Gather<float, bf16>,
                                avx512_bf16::Gather<bf16, float>,
                                avx512_bf16::Gather<bf16, bf16>,
                                nullptr,
                                avx512_bf16::KernelGrad<bf16>,
                                nullptr,
                                avx512_bf16::CausalUpdate<float, bf16>,
                                nullptr,
                                avx512_bf16::CausalUpdate<bf16, bf16>};
}  // namespace jdw
#endif  // JDW_MULTIVERSION
