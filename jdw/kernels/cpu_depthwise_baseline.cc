// jdw's depthwise loops (cpu_depthwise_loops.inc) for the compiler's default target (SSE2 on
// x86-64): 4 lanes of float32. Every CPU runs them; cpu_depthwise.cc chooses the widest
// instruction set the CPU runs.

#include "cpu_depthwise.h"

#define JDW_ISA baseline
#define JDW_TARGET
#define JDW_VECTOR_BYTES 16
#include "cpu_depthwise_loops.inc"

namespace jdw {
const Loops kBaselineLoops = JDW_LOOPS_OF(baseline);
}  // namespace jdw
