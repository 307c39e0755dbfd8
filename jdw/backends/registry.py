"""The registry of depthwise-convolution backends and the automatic choice between them.

Every backend computes the same canonical operation: channels-last ``x`` of shape
``(N, *spatial, C)``, a kernel of shape ``(*kernel_spatial, 1, C * M)`` and a
:class:`jdw.geometry.Geometry` (strides, explicit non-negative zero padding, dilation).
The public functions in :mod:`jdw.functional` handle everything else (layouts, padding
modes, bias, validation). The ``"xla"`` backend is always registered and is the reference
the others are tested against.

A backend is one module and one :func:`register` call; see the backend guide
(``docs/guides/backends.md``) for a complete ten-line example.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import importlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
from jax import lax

from jdw.geometry import Geometry


@dataclasses.dataclass(frozen=True)
class Backend:
    """One implementation of depthwise convolution.

    Attributes:
      name: the value of ``implementation=`` that selects it.
      conv: ``conv(x, kernel, geometry, *, precision, preferred_element_type)``: ``x``
        ``(N, *geometry.input_size, C)``, ``kernel`` ``(*geometry.kernel_size, 1, C * M)``, the result
        ``(N, *geometry.output_size, C * M)``.
      conv_transpose: ``conv_transpose(y, kernel, geometry, *, precision, preferred_element_type)``,
        the transposed convolution of the forward convolution over ``geometry``: ``y``
        ``(N, *geometry.output_size, C)``, the result ``(N, *geometry.input_size, C * M)``
        (channel ``c`` spreads to ``c * M + m``).
      description: one line for documentation and the benchmark.
      conv_bias_act: optional ``conv_bias_act(x, kernel, bias, geometry, *, activation, precision,
        preferred_element_type)``: the convolution with the bias (``None``: none) and the
        activation named ``activation`` (``None``: none) fused in.
      fused_activations: the activation names ``conv_bias_act`` fuses. Other activations, and
        backends without ``conv_bias_act``, get ``conv`` followed by XLA's bias add and
        activation, which XLA fuses into one elementwise pass.
      segment_conv: optional ``segment_conv(xp, kernel, reach, *, dilation, preferred_element_type)``,
        the causal 1-D convolution of packed sequences (:func:`jdw.causal_conv1d` with
        ``segment_ids``): ``xp`` ``(N, L + pad, C)`` is the chunk with ``pad = (W - 1) * dilation``
        earlier tokens in front, ``kernel`` ``(W, 1, C * M)``, ``reach`` ``(N, L)`` int32 how many
        earlier tokens each output may read (its segment's); the result ``(N, L, C * M)`` is
        ``Σ_i kernel[i] * xp[:, t + i * dilation]`` over the taps whose lag ``pad - i * dilation``
        is at most ``reach[:, t]``. Backends without one use ``"taps"``'s.
      causal_conv: optional ``causal_conv(x, kernel, bias, state, reach, *, dilation, activation,
        out_dtype, fallback)``, all of :func:`jdw.causal_conv1d` in one call (``state`` and ``reach``
        may be ``None``: zeros, and one segment), for a backend with a kernel that reads the state in
        place; ``fallback`` (same arguments) is the composed computation, for what it does not serve.
      causal_update: optional ``causal_update(x, state, kernel, bias, position, *, dilation, activation,
        out_dtype, fallback)``, :func:`jdw.causal_conv1d_update` (channels last: ``x`` ``(B, T, C)``,
        ``state`` ``(B, S, C)``, ``position`` ``(B,)`` int32 or ``None``; returns ``(y, new_state)``)
        for a backend with a kernel for it; ``fallback(x, state, kernel, bias, position)`` is the jnp
        computation, for what it does not serve.
    """

    name: str
    conv: Callable[..., jax.Array]
    conv_transpose: Callable[..., jax.Array]
    description: str
    conv_bias_act: Callable[..., jax.Array] | None = None
    fused_activations: frozenset[str] = frozenset()
    segment_conv: Callable[..., jax.Array] | None = None
    causal_conv: Callable[..., jax.Array] | None = None
    causal_update: Callable[..., tuple[jax.Array, jax.Array]] | None = None


def conv_bias_act(
    backend: Backend, x, kernel, bias, geometry: Geometry, *, activation: str | None, epilogue: Callable, **kwargs
) -> jax.Array:
    """Convolution, bias and activation on ``backend``: fused where it declares it can, else composed.

    ``activation`` is the activation's name, or ``None`` when it is an arbitrary function;
    ``epilogue`` is the activation as a function, applied here whenever the backend does
    not fuse it (the bias then still goes into the backend's kernel).
    """
    if backend.conv_bias_act is not None:
        if activation is not None and activation in backend.fused_activations:
            return backend.conv_bias_act(x, kernel, bias, geometry, activation=activation, **kwargs)
        if "identity" in backend.fused_activations and bias is not None:
            return epilogue(backend.conv_bias_act(x, kernel, bias, geometry, activation=None, **kwargs))
    y = backend.conv(x, kernel, geometry, **kwargs)
    if bias is not None:
        y = y + bias.astype(y.dtype).reshape((1,) * (y.ndim - 1) + (-1,))
    return epilogue(y)


def conv_transpose(backend: Backend, y, kernel, geometry: Geometry, **kwargs) -> jax.Array:
    """``backend.conv_transpose``, for :func:`dispatch`."""
    return backend.conv_transpose(y, kernel, geometry, **kwargs)


_REGISTRY: dict[str, Backend] = {}

# Backends registered by importing their module on first use, so that ``import jdw`` does not
# import what only they need (``jax.experimental.pallas`` for ``"pallas"``).
_DEFERRED: dict[str, str] = {"pallas": "jdw.backends.pallas"}

# Backends the automatic choice uses per platform (lowering platform, not default device), the
# first one available: measured by ``python -m jdw.bench``; platforms not listed use "xla".
_AUTOMATIC = {"cpu": ("cpu", "taps")}


def register(backend: Backend) -> Backend:
    """Adds ``backend`` to the registry (replacing one of the same name) and returns it."""
    _REGISTRY[backend.name] = backend
    return backend


def available() -> tuple[str, ...]:
    """Names accepted by ``implementation=``, besides ``None`` (automatic)."""
    return tuple(sorted(set(_REGISTRY) | set(_DEFERRED)))


def get(name: str) -> Backend:
    """Returns the backend called ``name``.

    Raises:
      ValueError: if no such backend is registered.
    """
    if name not in _REGISTRY and name in _DEFERRED:
        importlib.import_module(_DEFERRED[name])  # registers it
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown implementation {name!r}; available: {', '.join(map(repr, available()))} or None (automatic)"
        ) from None


_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("jdw_forced_implementation", default=None)


@contextlib.contextmanager
def forced_implementation(name: str) -> Iterator[None]:
    """Within this context every jdw convolution uses backend ``name``, whatever its ``implementation=``.

    For tools that trace a computation to inspect it rather than to run it fast, such as
    :func:`jdw.cost.summary`, which counts convolutions on the ``"xla"`` reference.

    Examples:
      >>> import jax, jax.numpy as jnp, jdw
      >>> with jdw.backends.forced_implementation("xla"):
      ...     jaxpr = jax.make_jaxpr(lambda x: jdw.depthwise_conv(x, jnp.ones((3, 3, 1, 4)), implementation="taps"))(
      ...         jnp.ones((1, 8, 8, 4)))
      >>> "conv_general_dilated" in str(jaxpr)
      True
    """
    get(name)
    token = _FORCED.set(name)
    try:
        yield
    finally:
        _FORCED.reset(token)


def forced() -> str | None:
    """The backend :func:`forced_implementation` imposes in this context, or ``None``."""
    return _FORCED.get()


def automatic_choice(platform: str) -> str:
    """The backend ``implementation=None`` uses when lowering for ``platform`` ("cpu", "cuda", "tpu", ...)."""
    return next((name for name in _AUTOMATIC.get(platform, ()) if name in available()), "xla")


def dispatch(implementation: str | None, op: Callable[..., jax.Array], *args: Any, **kwargs: Any) -> jax.Array:
    """``op(backend, *args, **kwargs)`` on the chosen backend (``op``: :func:`conv_bias_act` or :func:`conv_transpose`).

    ``args`` are the arrays (or ``None``), ``kwargs`` the static rest. With
    ``implementation=None`` the choice is made per lowering platform with
    :func:`jax.lax.platform_dependent`, so a function exported from a CPU machine for
    TPU or CUDA carries the choice for that platform, not the CPU's.
    """
    implementation = forced() or implementation
    if any(dim == 0 for dim in args[0].shape):
        # An empty batch has nothing to compute. The reference returns the empty result (and
        # zero gradients); the others' tiles and batch reshapes assume at least one image.
        implementation = "xla"
    if implementation is not None:
        return op(get(implementation), *args, **kwargs)
    choices = {name: automatic_choice(name) for name in ("cpu", "cuda", "rocm", "tpu")}
    branches = {
        platform: functools.partial(op, get(name), **kwargs) for platform, name in choices.items() if name != "xla"
    }
    default = functools.partial(op, get("xla"), **kwargs)
    if not branches:
        return default(*args)
    branches, default = _same_output_sharding(branches, default, args)
    return lax.platform_dependent(*args, default=default, **branches)


def _same_output_sharding(branches: dict[str, Callable], default: Callable, args: tuple) -> tuple[dict, Callable]:
    """Makes every branch return the same sharding, which ``platform_dependent`` requires.

    Under a mesh with explicit axes the output sharding is part of the type, and backends
    may infer different ones (XLA's grouped convolution drops a sharded channel axis that
    a tap sum keeps). All branches then reshard to the most sharded of their outputs, which
    costs at most a local slice of a replicated axis, never an all-gather.
    """
    if not explicit_mesh(jax.sharding.get_abstract_mesh()):
        return branches, default
    candidates = [default, *branches.values()]
    specs = [jax.eval_shape(branch, *args).sharding.spec for branch in candidates]
    if len(set(specs)) == 1:
        return branches, default
    target = max(specs, key=lambda spec: sum(axis is not None for axis in spec))

    def resharded(branch: Callable) -> Callable:
        return lambda *a: jax.sharding.reshard(branch(*a), target)

    return {platform: resharded(b) for platform, b in branches.items()}, resharded(default)


def explicit_mesh(mesh: Any) -> bool:
    """Whether ``mesh`` (a mesh, an abstract mesh or ``None``) has axes of type ``Explicit`` (sharding in types)."""
    return mesh is not None and not mesh.empty and jax.sharding.AxisType.Explicit in mesh.axis_types


def sharded_axes(x: jax.Array, kernel: jax.Array) -> tuple[Any, Any]:
    """The mesh axes ``x``'s batch and channels are sharded over (``None`` where unsharded).

    Depthwise channels are independent, so a channel axis sharded on either ``x`` or the
    kernel can stay sharded in the output; every backend keeps it.
    """
    x_spec = tuple(jax.typeof(x).sharding.spec) + (None,) * x.ndim
    kernel_spec = tuple(jax.typeof(kernel).sharding.spec) + (None,) * kernel.ndim
    channels = x_spec[x.ndim - 1] if x_spec[x.ndim - 1] is not None else kernel_spec[kernel.ndim - 1]
    return x_spec[0], channels
