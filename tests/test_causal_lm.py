"""The sequence-model example (examples/causal_lm.py): it trains, and cached decoding is the full forward."""

from __future__ import annotations

import causal_lm
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import assert_close


@pytest.fixture(scope="module")
def data():
    return np.frombuffer(causal_lm.corpus(), np.uint8)


def test_the_corpus_ships_with_python(data):
    assert len(data) > 100_000
    assert b"Return" in data.tobytes()


@pytest.mark.parametrize("implementation", ["taps", "xla"])
def test_cached_decoding_gives_the_full_forward_logits(implementation):
    model = causal_lm.GatedConvLM(16, dilations=(1, 3), implementation=implementation, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 20)), jnp.int32)
    full = model(tokens)
    model.init_cache(2)
    steps = [model(tokens[:, :12], decode=True)] + [model(tokens[:, t : t + 1], decode=True) for t in range(12, 20)]
    assert_close(jnp.concatenate(steps, axis=1), full)


def test_training_lowers_the_loss_and_generation_uses_the_cache(data):
    model = causal_lm.GatedConvLM(32, dilations=(1, 2), rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes its int32 step count with floats
        batches = zip(range(30), causal_lm.batches(data, 8, 32))
        losses = [float(causal_lm.train_step(model, optimizer, batch)) for _, batch in batches]
        text = causal_lm.generate(model, b"The ", 12)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
    assert isinstance(text, bytes) and len(text) == 12
    assert model.blocks[1].conv.state.shape == (1, 6, 32)  # the cache of a dilation-2 block: (4 - 1) * 2 tokens
