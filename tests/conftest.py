"""A strict JAX environment: implicit rank or dtype promotion inside jdw is a bug."""

import jax
import numpy as np
import pytest
from helpers import IMPLEMENTATIONS

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(0)
