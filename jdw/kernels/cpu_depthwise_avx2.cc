// jdw's depthwise loops (cpu_depthwise_loops.inc) for AVX2 and FMA: 8 lanes of float32.
// cpu_depthwise.cc chooses the widest instruction set the CPU runs.

#include "cpu_depthwise.h"

#ifdef JDW_MULTIVERSION
#define JDW_ISA avx2
#define JDW_TARGET __attribute__((target("avx2,fma")))
#define JDW_VECTOR_BYTES 32
#include "cpu_depthwise_loops.inc"

namespace jdw {
const Loops kAvx2Loops = JDW_LOOPS_OF(avx2);
}  // namespace jdw
#endif  // JDW_MULTIVERSION
