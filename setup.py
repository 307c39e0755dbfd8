"""Builds jdw's compiled parts for XLA:CPU: the depthwise-convolution loops and the batch-norm sums (jdw/kernels/*.cc).

Everything else is in pyproject.toml. The extensions are optional: where they cannot be built (no C++17
compiler, a compiler without GCC's vector extensions), the package installs without them: the
``"cpu"`` backend is not registered (``"taps"`` serves CPU instead) and batch norm sums with XLA.
"""

import os
import sys
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _xla_ffi_include() -> str | None:
    # The XLA FFI headers ship with jaxlib (a build requirement, pyproject.toml; absent only in a build
    # without isolation in an environment without jaxlib, which then installs without the extension).
    try:
        import jaxlib
    except ImportError:
        print("jdw: jaxlib is not importable, so the C++ extension is not built", file=sys.stderr)
        return None
    return os.path.join(os.path.dirname(jaxlib.__file__), "include")


class _ParallelBuildExt(build_ext):
    """Compiles an extension's sources in parallel, one compiler process per core.

    The depthwise loops are one translation unit per instruction set (cpu_depthwise_<isa>.cc), minutes of
    compiling each; setuptools compiles an extension's sources one after another.
    """

    def build_extensions(self):
        serial = self.compiler.compile

        def compile_parallel(sources, *args, **kwargs):
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            with ThreadPoolExecutor(max(1, cores or 1)) as pool:
                objects = pool.map(lambda source: serial([source], *args, **kwargs), sources)
                return [obj for objs in objects for obj in objs]

        self.compiler.compile = compile_parallel
        super().build_extensions()


include = _xla_ffi_include()
_ISAS = ("avx512_bf16", "avx512", "avx2", "baseline")
setup(
    cmdclass={"build_ext": _ParallelBuildExt},
    ext_modules=[]
    if include is None
    else [
        Extension(
            f"jdw.kernels._cpu_{name}",
            sources=[f"jdw/kernels/cpu_{name}.cc", *extra_sources],
            depends=["jdw/kernels/cpu_parallel.h", "jdw/kernels/cpu_python.h", "jdw/kernels/cpu_target.h", *depends],
            include_dirs=[include],
            language="c++",
            # -g0: without Python's -g, which made the loops' module 112 MB (18 MB without) and its compile slower.
            extra_compile_args=["-std=c++17", "-O3", "-g0", "-fvisibility=hidden", "-Wno-attributes", "-Wno-psabi"],
            optional=True,
        )
        for name, extra_sources, depends in (
            (
                "depthwise",
                [f"jdw/kernels/cpu_depthwise_{isa}.cc" for isa in _ISAS],
                ["jdw/kernels/cpu_depthwise.h", "jdw/kernels/cpu_depthwise_loops.inc"],
            ),
            ("batch_norm", [], []),
        )
    ],
)
