"""Types of the arguments jdw's functions, layers and models take, for annotating user code.

As :mod:`flax.typing` does for Flax, this module names the argument types once; the
functions in :mod:`jdw.functional`, the layers in :mod:`jdw.nnx` and :mod:`jdw.linen` and
the models annotate with these.

Examples:
  >>> import jax.numpy as jnp
  >>> import jdw
  >>> from jdw.typing import ActivationLike, PaddingLike
  >>> def conv(x, kernel, padding: PaddingLike = "SAME", activation: ActivationLike = "relu6"):
  ...     return jdw.depthwise_conv(x, kernel, padding=padding, activation=activation)
  >>> conv(jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 1, 2))).shape
  (1, 5, 5, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import jax

__all__ = ["Activation", "ActivationLike", "DataFormat", "PaddingLike", "PaddingMode"]

PaddingLike = str | int | Sequence[int | tuple[int, int]]
"""``"SAME"``, ``"VALID"``, ``"CAUSAL"``, one int for every side, or per spatial dimension an int or a
``(low, high)`` pair."""

PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
"""How the padded border is filled: zeros, or from the input (``numpy.pad``'s reflect, edge, wrap)."""

DataFormat = Literal["channels_last", "channels_first"]
"""Where the channels are: last (``NHWC``, JAX's and Flax's default) or first (``NCHW``, PyTorch's)."""

Activation = Callable[[jax.Array], jax.Array]
"""An elementwise function of an array."""

ActivationLike = str | Activation | None
"""A name from :data:`jdw.functional.activations.ACTIVATIONS`, a callable, or ``None`` (identity)."""
