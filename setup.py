"""Builds jdw's compiled parts for XLA:CPU: the depthwise-convolution loops and the batch-norm sums (jdw/kernels/*.cc).

Everything else is in pyproject.toml. The extensions are optional: where they cannot be built (no C++17
compiler, a compiler without GCC's vector extensions), the package installs without them: the
``"cpu"`` backend is not registered (``"taps"`` serves CPU instead) and batch norm sums with XLA.
"""

import os
import sys

from setuptools import Extension, setup


def _xla_ffi_include() -> str | None:
    # The XLA FFI headers ship with jaxlib (a build requirement, pyproject.toml; absent only in a build
    # without isolation in an environment without jaxlib, which then installs without the extension).
    try:
        import jaxlib
    except ImportError:
        print("jdw: jaxlib is not importable, so the C++ extension is not built", file=sys.stderr)
        return None
    return os.path.join(os.path.dirname(jaxlib.__file__), "include")


include = _xla_ffi_include()
setup(
    ext_modules=[]
    if include is None
    else [
        Extension(
            f"jdw.kernels._cpu_{name}",
            sources=[f"jdw/kernels/cpu_{name}.cc"],
            depends=["jdw/kernels/cpu_parallel.h", "jdw/kernels/cpu_python.h", *depends],
            include_dirs=[include],
            language="c++",
            extra_compile_args=["-std=c++17", "-O3", "-fvisibility=hidden", "-Wno-attributes", "-Wno-psabi"],
            optional=True,
        )
        for name, depends in (("depthwise", ["jdw/kernels/cpu_depthwise_loops.inc"]), ("batch_norm", []))
    ]
)
