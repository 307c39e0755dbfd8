// What jdw's two CPU extensions (_cpu_depthwise, _cpu_batch_norm) share about instruction sets:
// the macros that compile their loops once per instruction set, and the choice of the widest set
// this CPU runs, capped by the environment variable JDW_CPU_INSTRUCTION_SET (jdw/kernels/cpu_target.py
// names the same sets and warns about any other value).

#ifndef JDW_KERNELS_CPU_TARGET_H_
#define JDW_KERNELS_CPU_TARGET_H_

#include <cstdlib>
#include <cstring>

// JDW_INLINE: inlined where GCC would call (a call per register block costs its prologue).
// JDW_IN_REGISTER(v): v is held in a register from here on; GCC would otherwise fold its load
// into every instruction that uses it, a load each.
#if defined(__GNUC__) || defined(__clang__)
#define JDW_INLINE inline __attribute__((always_inline))
#else
#define JDW_INLINE inline
#endif
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define JDW_IN_REGISTER(v) asm("" : "+v"(v))
#else
#define JDW_IN_REGISTER(v) (void)0
#endif

// JDW_MULTIVERSION: loops are compiled once per instruction set (the depthwise loops in
// cpu_depthwise_<isa>.cc, the batch-norm sums with target attributes), with GCC and Clang on
// x86-64; elsewhere only the baseline copy exists.
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define JDW_MULTIVERSION 1
#include <cpuid.h>
#endif

namespace jdw {

// The instruction sets jdw compiles loops for, narrowest first: the baseline (SSE2 on x86-64), AVX2
// with FMA, AVX-512 (F, BW, VL and DQ) and AVX-512 with the bfloat16 conversions (AVX512-BF16).
enum class InstructionSet : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

// Their names, as JDW_CPU_INSTRUCTION_SET and the Python modules' instruction_set() spell them.
inline const char* InstructionSetName(InstructionSet set) {
  switch (set) {
    case InstructionSet::kAvx512Bf16:
      return "avx512_bf16";
    case InstructionSet::kAvx512:
      return "avx512";
    case InstructionSet::kAvx2:
      return "avx2";
    default:
      return "baseline";
  }
}

// The widest instruction set this CPU runs, at most the one JDW_CPU_INSTRUCTION_SET names (unset,
// empty or another name: no cap), read once. The tests run the narrower sets' loops that way.
inline InstructionSet CpuInstructionSet() {
  static const InstructionSet chosen = [] {
    InstructionSet cap = InstructionSet::kAvx512Bf16;
    if (const char* named = std::getenv("JDW_CPU_INSTRUCTION_SET"); named != nullptr) {
      for (int s = 0; s <= static_cast<int>(InstructionSet::kAvx512Bf16); ++s) {
        const auto set = static_cast<InstructionSet>(s);
        if (std::strcmp(named, InstructionSetName(set)) == 0) cap = set;
      }
    }
    InstructionSet widest = InstructionSet::kBaseline;
#ifdef JDW_MULTIVERSION
    __builtin_cpu_init();
    // AVX512-BF16: CPUID leaf 7, sub-leaf 1, EAX bit 5 (Cooper Lake, Sapphire Rapids and later, Zen 4).
    unsigned a = 0, b = 0, c = 0, d = 0;
    const bool bf16 = __get_cpuid_count(7, 1, &a, &b, &c, &d) != 0 && (a >> 5 & 1u) != 0;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
      widest = bf16 ? InstructionSet::kAvx512Bf16 : InstructionSet::kAvx512;
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      widest = InstructionSet::kAvx2;
    }
#endif
    return static_cast<int>(cap) < static_cast<int>(widest) ? cap : widest;
  }();
  return chosen;
}

}  // namespace jdw

#endif  // JDW_KERNELS_CPU_TARGET_H_
