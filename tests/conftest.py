"""A strict JAX environment: implicit rank or dtype promotion inside jdw is a bug."""

import pathlib
import sys

import jax
import numpy as np
import pytest
from helpers import IMPLEMENTATIONS

# The examples' scripts (train_mobilenet.py, causal_lm.py) are imported by their tests.
EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(0)
