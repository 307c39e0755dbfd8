"""Test-session environment, set before anything imports JAX.

The test extra installs JAX's CUDA plugin so that ``tests/test_compile_gpu.py`` can compile
for NVIDIA GPUs without one; under ``JAX_PLATFORMS=cpu`` the plugin registers without
looking for a GPU (and without printing why it found none). To run the suite on a real
accelerator, set ``JAX_PLATFORMS`` yourself (for example ``JAX_PLATFORMS=cuda``).
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
