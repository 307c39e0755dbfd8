// jdw's depthwise loops (cpu_depthwise_loops.inc) for AVX-512 (F, BW, VL and DQ): 16 lanes of
// float32. cpu_depthwise.cc chooses the widest instruction set the CPU runs.

#include "cpu_depthwise.h"

#ifdef JDW_MULTIVERSION
#define JDW_ISA avx512
#define JDW_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#define JDW_VECTOR_BYTES 64
#include "cpu_depthwise_loops.inc"

namespace jdw {
const Loops kAvx512Loops = JDW_LOOPS_OF(avx512);
}  // namespace jdw
#endif  // JDW_MULTIVERSION
