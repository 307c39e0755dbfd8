"""The one geometry: output sizes as lax computes them, the adjoint as JAX's own VJP, validation named."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jdw.geometry import Geometry, output_size, transpose_padding

# (n, kernel, stride, dilation, (low, high)) along one dimension: odd and even sizes, strides
# that do not divide them, dilations, padding larger than the kernel and crops.
CASES = [
    (n, k, s, d, p)
    for n, k, s, d, p in itertools.product(
        (1, 4, 7, 8), (1, 2, 3, 5), (1, 2, 3), (1, 2), ((0, 0), (1, 1), (2, 0), (0, 3))
    )
    if n + sum(p) >= (k - 1) * d + 1
]


def _conv(x, kernel, geometry: Geometry):
    return lax.conv_general_dilated(
        x,
        kernel,
        geometry.strides,
        geometry.padding,
        lhs_dilation=geometry.input_dilation,
        rhs_dilation=geometry.dilation,
        dimension_numbers=("NWC", "WIO", "NWC"),
    )


def test_output_size_and_adjoint_follow_lax():
    for case in CASES[::4]:
        _check_against_lax(*case)


def _check_against_lax(n, k, s, d, p):
    geometry = Geometry((n,), (k,), s, (p,), d)
    x = jnp.asarray(np.random.default_rng(n * 31 + k).standard_normal((1, n, 1)), jnp.float32)
    kernel = jnp.asarray(np.random.default_rng(k).standard_normal((k, 1, 1)), jnp.float32)
    y, vjp = jax.vjp(lambda x: _conv(x, kernel, geometry), x)
    assert y.shape[1:-1] == geometry.output_size == (output_size(n, p, k, s, d),)
    # The transposed convolution: the flipped kernel over the adjoint geometry gives JAX's input gradient.
    adjoint = geometry.adjoint()
    assert adjoint.output_size == geometry.input_size
    assert adjoint.padding == (transpose_padding(n, y.shape[1], k, s, d, p[0]),)
    dy = jnp.asarray(np.random.default_rng(7).standard_normal(y.shape), jnp.float32)
    np.testing.assert_allclose(_conv(dy, lax.rev(kernel, (0,)), adjoint), vjp(dy)[0], rtol=1e-5, atol=1e-5)


def test_normalisation_hashing_and_views():
    g = Geometry(input_size=(7, 9), kernel_size=(3, 3), strides=2, padding=((1, 1), (1, 1)), dilation=(1, 2))
    assert g.strides == (2, 2) and g.input_dilation == (1, 1)
    assert g.kernel_span == (3, 5) and g.output_size == (4, 4)
    assert hash(g) == hash(Geometry((7, 9), (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 2)))
    one = Geometry((10,), (4,), 1, ((3, 0),))
    assert one.as_2d() == Geometry((1, 10), (1, 4), 1, ((0, 0), (3, 0)))
    three = Geometry((3, 5, 5), (2, 3, 3), (1, 2, 2), ((0, 1), (1, 1), (1, 1)))
    assert three.drop_leading() == Geometry((5, 5), (3, 3), 2, ((1, 1), (1, 1)))
    assert "a 7x9 convolution" in str(g)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_size=(4,), kernel_size=(3,), strides=0), "strides must be positive"),
        (dict(input_size=(4,), kernel_size=(3, 3)), "input_size must have one entry per spatial dimension"),
        (dict(input_size=(2,), kernel_size=(5,)), "has an empty input or output"),
        (dict(input_size=(4,), kernel_size=(3,), padding=((1, 1), (1, 1))), "one \\(low, high\\) pair"),
    ],
)
def test_bad_geometries_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Geometry(**kwargs)


def test_adjoint_of_an_adjoint_is_refused():
    with pytest.raises(ValueError, match="dilates its input"):
        Geometry((7,), (3,), 2, ((1, 1),)).adjoint().adjoint()
