"""The backend registry, the automatic choice, and what each path compiles to."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import jdw
from jdw import backends


def test_registry():
    assert {"xla", "taps"} <= set(backends.available())
    assert backends.get("xla").name == "xla"
    with pytest.raises(ValueError, match="unknown implementation"):
        backends.get("nope")


def test_cpu_extension_is_built_where_ci_runs():
    """The package builds its C++ loops on Linux x86-64 (CI's platform): a build that failed quietly
    (the extensions are optional) would leave CPU on the slower "taps" path and XLA's batch-norm sums."""
    import platform

    from jdw.kernels import cpu_batch_norm, cpu_depthwise

    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip("the extension is only required on Linux x86-64")
    assert cpu_depthwise.AVAILABLE and cpu_batch_norm.AVAILABLE
    assert "cpu" in backends.available()
    assert cpu_depthwise.instruction_set() in ("avx512_bf16", "avx512", "avx2", "baseline")


def test_automatic_choice_per_platform():
    from jdw.kernels import cpu_depthwise

    assert backends.automatic_choice("cpu") == ("cpu" if cpu_depthwise.AVAILABLE else "taps")
    assert backends.automatic_choice("tpu") == "xla"
    assert backends.automatic_choice("cuda") == "xla"


def _loss(x, k, implementation=None):
    return jnp.sum(jdw.depthwise_conv(x, k, strides=2, implementation=implementation) ** 2)


def test_automatic_choice_follows_the_lowering_platform():
    """Exported for CUDA/TPU from this CPU machine, the automatic path is XLA's convolution; on CPU, taps."""
    x, k = jnp.ones((2, 16, 16, 8)), jnp.ones((3, 3, 1, 8))
    grad = jax.jit(jax.grad(_loss, argnums=(0, 1)))
    cpu = grad.lower(x, k).compile().as_text()
    assert "convolution(" not in cpu
    for platform in ("cuda", "tpu"):
        exported = jax.export.export(grad, platforms=[platform])(x, k)
        assert "stablehlo.convolution" in exported.mlir_module()


@pytest.mark.skipif("cpu" not in backends.available(), reason="the C++ extension is not built here")
def test_cpu_backend_runs_taps_code_when_lowered_for_other_platforms():
    """implementation="cpu" lowered for CUDA or TPU runs the taps code (the custom calls are XLA:CPU's);
    for CPU it calls the C++ loops, and jax.export takes them with cpu_depthwise.EXPORT_CHECKS."""
    from jdw.kernels import cpu_depthwise

    x, k = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 1, 4))
    grad = jax.jit(jax.grad(lambda x, k: _loss(x, k, "cpu"), argnums=(0, 1)))
    for platform in ("cuda", "tpu"):
        module = jax.export.export(grad, platforms=[platform])(x, k).mlir_module()
        assert "custom_call" not in module and "convolution" not in module
    with pytest.raises(ValueError, match="custom calls whose targets have no compatibility guarantees"):
        jax.export.export(grad, platforms=["cpu"])(x, k)
    exported = jax.export.export(grad, platforms=["cpu"], disabled_checks=cpu_depthwise.EXPORT_CHECKS)(x, k)
    module = exported.mlir_module()
    assert "jdw_depthwise_transpose" in module and "jdw_depthwise_kernel_grad" in module
    for got, want in zip(exported.call(x, k), jax.grad(lambda x, k: _loss(x, k, "xla"), argnums=(0, 1))(x, k)):
        assert jnp.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_taps_kernel_gradient_has_no_dense_channel_expansion():
    """XLA's CPU kernel gradient expands to a C x C convolution; the taps path has no convolution at all."""
    x, k = jnp.ones((2, 8, 8, 144)), jnp.ones((3, 3, 1, 144))
    dk = jax.jit(jax.grad(lambda k: _loss(x, k, "taps")))
    hlo = dk.lower(k).compile().as_text()
    assert "convolution(" not in hlo
    assert "144,3,3,144" not in hlo


def test_custom_backend_registration():
    calls = []
    xla = backends.get("xla")

    def conv(x, kernel, geometry, **kwargs):
        calls.append(geometry.strides)
        return xla.conv(x, kernel, geometry, **kwargs)

    backends.register(backends.Backend("test-spy", conv, xla.conv_transpose, "spy"))
    try:
        jdw.depthwise_conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 1, 2)), strides=2, implementation="test-spy")
        assert calls == [(2, 2)]
    finally:
        from jdw.backends import registry

        registry._REGISTRY.pop("test-spy")


@pytest.mark.parametrize("implementation", [None, "xla", "taps"])
@pytest.mark.parametrize("x_channels", [None, "model"])
def test_explicit_mesh_keeps_channel_sharding(implementation, x_channels):
    """Under a mesh with explicit axes the sharding is part of the type: every path must agree on it."""
    from jax.sharding import PartitionSpec as P

    with jax.set_mesh(jax.make_mesh((1, 1), ("data", "model"), (jax.sharding.AxisType.Explicit,) * 2)):
        kernel = jax.device_put(jnp.ones((3, 3, 1, 4)), P(None, None, None, "model"))
        x = jax.device_put(jnp.ones((2, 5, 5, 4)), P("data", None, None, x_channels))

        def loss(x, kernel):
            return jnp.sum(jdw.depthwise_conv(x, kernel, implementation=implementation))

        y = jax.jit(lambda x, k: jdw.depthwise_conv(x, k, implementation=implementation))(x, kernel)
        dx, dk = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
        t = jax.jit(lambda y, k: jdw.depthwise_conv_transpose(y, k, implementation=implementation))(y, kernel)
    assert jax.typeof(y).sharding.spec == P("data", None, None, "model")
    assert float(y[0, 2, 2, 0]) == 9.0
    assert float(dx[0, 2, 2, 0]) == 9.0 and float(dk[1, 1, 0, 0]) == 50.0
    assert t.shape == x.shape
