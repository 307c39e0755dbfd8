"""Activations by name, as MobileNets and the fused kernel epilogues use them."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdw.typing import Activation, ActivationLike


def _identity(x: jax.Array) -> jax.Array:
    return x


ACTIVATIONS: dict[str, Activation] = {
    "identity": _identity,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "hard_swish": jax.nn.hard_swish,
    "hard_sigmoid": jax.nn.hard_sigmoid,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "sigmoid": jax.nn.sigmoid,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
}


def get_activation(activation: ActivationLike) -> Activation:
    """Returns the activation function named by ``activation``.

    Args:
      activation: a name from :data:`ACTIVATIONS` (``"relu"``, ``"relu6"``,
        ``"hard_swish"``, ``"hard_sigmoid"``, ``"silu"``/``"swish"``, ``"sigmoid"``,
        ``"gelu"``, ``"tanh"``, ``"identity"``), ``None`` for the identity, or any
        callable, returned unchanged.

    Returns:
      A function from arrays to arrays.

    Raises:
      ValueError: for an unknown name.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jdw.functional import get_activation
      >>> get_activation("relu6")(jnp.array([-1.0, 3.0, 9.0]))
      Array([0., 3., 6.], dtype=float32)
    """
    if activation is None:
        return _identity
    if callable(activation):
        return activation
    if isinstance(activation, str) and activation in ACTIVATIONS:
        return ACTIVATIONS[activation]
    raise ValueError(f"unknown activation {activation!r}; expected a callable, None or one of {sorted(ACTIVATIONS)}")
