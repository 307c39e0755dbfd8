"""Default parameter initializers of jdw's layers."""

from __future__ import annotations

from jax.nn import initializers


def depthwise_kernel_init() -> initializers.Initializer:
    """He-normal initializer for a depthwise kernel ``(*kernel_size, 1, C * M)``.

    Each output of a depthwise convolution sums ``prod(kernel_size)`` products, one
    input channel's window, so that is its fan-in. (A grouped-convolution kernel
    read as a dense one would suggest ``prod(kernel_size) * C``, a variance
    ``C`` times too small.) The gain 2 suits the ReLU-family activations
    that follow depthwise layers in MobileNets. This is ``jax.nn.initializers.he_normal``
    (a normal truncated at two standard deviations) with the axes spelled out.

    Returns:
      An ``init(key, shape, dtype)`` function.

    Examples:
      >>> import jax, jdw
      >>> kernel = jdw.initializers.depthwise_kernel_init()(jax.random.key(0), (3, 3, 1, 64))
      >>> round(float(kernel.std() * 3), 1)  # sqrt(2 / 9) * 3 = sqrt(2)
      1.4
    """
    return initializers.he_normal(in_axis=-2, out_axis=-1)


def pointwise_kernel_init() -> initializers.Initializer:
    """LeCun-normal initializer for a pointwise kernel ``(..., C_in, C_out)``, Flax's ``Conv`` default.

    Returns:
      An ``init(key, shape, dtype)`` function.

    Examples:
      >>> import jax, jdw
      >>> jdw.initializers.pointwise_kernel_init()(jax.random.key(0), (1, 1, 16, 32)).shape
      (1, 1, 16, 32)
    """
    return initializers.lecun_normal()


__all__ = ["depthwise_kernel_init", "pointwise_kernel_init"]
