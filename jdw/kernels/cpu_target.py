"""The instruction sets jdw's CPU extensions compile their loops for, and the variable that caps them.

:mod:`jdw.kernels.cpu_depthwise` and :mod:`jdw.kernels.cpu_batch_norm` each run the widest of these
that the CPU has, at most the one named by the environment variable ``JDW_CPU_INSTRUCTION_SET``
(read when they load; ``cpu_target.h`` makes the same choice in C++). The tests run the narrower
sets' loops that way.
"""

from __future__ import annotations

import functools
import os
import warnings

#: The instruction sets, widest first: AVX-512 with the bfloat16 conversions (AVX512-BF16), AVX-512
#: (F, BW, VL and DQ), AVX2 with FMA, and the baseline (SSE2 on x86-64; the only copy elsewhere).
INSTRUCTION_SETS = ("avx512_bf16", "avx512", "avx2", "baseline")

#: The environment variable that caps the choice.
VARIABLE = "JDW_CPU_INSTRUCTION_SET"


@functools.cache
def check_environment() -> None:
    """Warns, once per process, when ``JDW_CPU_INSTRUCTION_SET`` names no instruction set.

    The extensions then ignore the variable and run the widest set the CPU has.

    Examples:
      >>> from jdw.kernels import cpu_target
      >>> cpu_target.check_environment()  # nothing to say where the variable is unset or valid
    """
    value = os.environ.get(VARIABLE)
    if value and value not in INSTRUCTION_SETS:
        warnings.warn(
            f"{VARIABLE}={value!r} names no instruction set jdw compiles for ({', '.join(INSTRUCTION_SETS)}): "
            "jdw's CPU loops ignore it and run the widest set this CPU has",
            RuntimeWarning,
            stacklevel=3,
        )
