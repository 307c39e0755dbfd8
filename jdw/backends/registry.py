"""The registry of depthwise-convolution backends and the automatic choice between them.

Every backend computes the same canonical operation: channels-last ``x`` of shape
``(N, *spatial, C)``, a kernel of shape ``(*kernel_spatial, 1, C * M)``, explicit
non-negative zero padding. The public functions in :mod:`jdw.functional` handle
everything else (layouts, padding modes, bias, validation). The ``"xla"``
backend is always registered and is the reference the others are tested against;
a backend that cannot serve a call raises :class:`NotImplementedError`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
from jax import lax

Pairs = tuple[tuple[int, int], ...]


@dataclasses.dataclass(frozen=True)
class Backend:
    """One implementation of depthwise convolution.

    Attributes:
      name: the value of ``implementation=`` that selects it.
      conv: ``conv(x, kernel, *, strides, padding, dilation, precision, preferred_element_type)``.
      conv_transpose: ``conv_transpose(x, kernel, *, strides, padding, dilation, output_spatial,
        precision, preferred_element_type)``, the transposed convolution whose ``padding`` is that
        of the forward convolution it transposes.
      description: one line for documentation and the benchmark.
      conv_bias_act: optional ``conv_bias_act(x, kernel, bias, *, activation, strides, padding, dilation,
        precision, preferred_element_type)``: the convolution with the bias and the activation
        named ``activation`` fused in. Backends without it get ``conv`` followed by XLA's bias
        add and activation, which XLA fuses into one elementwise pass.
    """

    name: str
    conv: Callable[..., jax.Array]
    conv_transpose: Callable[..., jax.Array]
    description: str
    conv_bias_act: Callable[..., jax.Array] | None = None

    def method(self, name: str) -> Callable[..., jax.Array]:
        """``conv``, ``conv_transpose`` or ``conv_bias_act`` (native or composed)."""
        if name == "conv_bias_act":
            return functools.partial(_conv_bias_act, self)
        return getattr(self, name)


def _conv_bias_act(backend: Backend, x, kernel, bias, *, activation, epilogue, **kwargs) -> jax.Array:
    """Convolution, bias and activation: fused where ``backend`` can, else composed.

    ``activation`` is a name the backend may fuse, or ``None`` when the activation is an
    arbitrary function; ``epilogue`` is the activation as a function, applied here whenever
    the backend did not apply it.
    """
    if backend.conv_bias_act is not None:
        try:
            y = backend.conv_bias_act(x, kernel, bias, activation=activation, **kwargs)
        except NotImplementedError:
            pass
        else:  # an activation that has no name (a callable) runs after the kernel
            return y if activation is not None else epilogue(y)
    y = backend.conv(x, kernel, **kwargs)
    if bias is not None:
        y = y + bias.astype(y.dtype).reshape((1,) * (y.ndim - 1) + (-1,))
    return epilogue(y)


_REGISTRY: dict[str, Backend] = {}

# Backend the automatic choice uses per platform (lowering platform, not default device):
# measured by ``python -m jdw.bench``; platforms not listed use "xla".
_AUTOMATIC = {"cpu": "taps"}


def register(backend: Backend) -> Backend:
    """Adds ``backend`` to the registry (replacing one of the same name) and returns it."""
    _REGISTRY[backend.name] = backend
    return backend


def available() -> tuple[str, ...]:
    """Names accepted by ``implementation=``, besides ``None`` (automatic)."""
    return tuple(sorted(_REGISTRY))


def get(name: str) -> Backend:
    """Returns the backend called ``name``.

    Raises:
      ValueError: if no such backend is registered.
    """
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


def automatic_choice(platform: str) -> str:
    """The backend ``implementation=None`` uses when lowering for ``platform`` ("cpu", "cuda", "tpu", ...)."""
    name = _AUTOMATIC.get(platform, "xla")
    return name if name in _REGISTRY else "xla"


def dispatch(implementation: str | None, method: str, *args: Any, **kwargs: Any) -> jax.Array:
    """Calls ``method`` ("conv", "conv_transpose" or "conv_bias_act") of the chosen backend.

    With ``implementation=None`` the choice is made per lowering platform with
    :func:`jax.lax.platform_dependent`, so a function exported from a CPU machine for
    TPU or CUDA carries the choice for that platform, not the CPU's.
    """
    implementation = _FORCED.get() or implementation
    if any(dim == 0 for dim in args[0].shape):
        # An empty batch has nothing to compute. The reference returns the empty result (and
        # zero gradients); the others' tiles and batch reshapes assume at least one image.
        implementation = "xla"
    if implementation is not None:
        return get(implementation).method(method)(*args, **kwargs)
    choices = {name: automatic_choice(name) for name in ("cpu", "cuda", "rocm", "tpu")}
    branches = {
        platform: functools.partial(get(name).method(method), **kwargs)
        for platform, name in choices.items()
        if name != "xla"
    }
    default = functools.partial(get("xla").method(method), **kwargs)
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


def pairs(padding: Sequence[Sequence[int]]) -> Pairs:
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def adjoint_padding(
    n_in: int, n_out: int, kernel: int, stride: int, dilation: int, low: int
) -> tuple[tuple[int, int, int], tuple[int, int]]:
    """How the transposed convolution of one spatial dimension is computed as a stride-1 convolution.

    The cotangent (``n_out`` long) is dilated by ``stride`` and padded so that a stride-1
    convolution with the flipped kernel gives the ``n_in`` input positions. Returns the
    ``lax.pad`` config ``(low, high, interior)`` applied to the cotangent (crops are negative)
    and the zero padding ``(low, high)`` left to the convolution, which a backend may fuse.
    Where the crop would consume the whole dilated cotangent (an output reading only
    padding), all of the padding goes to ``lax.pad``.

    Examples:
      >>> adjoint_padding(n_in=8, n_out=4, kernel=3, stride=2, dilation=1, low=0)  # SAME, stride 2
      ((0, 0, 1), (2, 1))
      >>> adjoint_padding(n_in=1, n_out=1, kernel=2, stride=3, dilation=1, low=3)  # reads only padding
      ((-2, 3, 2), (0, 0))
    """
    span = (kernel - 1) * dilation + 1
    lo, hi = span - 1 - low, n_in - (n_out - 1) * stride - 1 + low
    dilated = (n_out - 1) * stride + 1
    if dilated + min(lo, 0) + min(hi, 0) < 1:
        return (lo, hi, stride - 1), (0, 0)
    return (min(lo, 0), min(hi, 0), stride - 1), (max(lo, 0), max(hi, 0))
