"""The ``"pallas"`` backend: jdw's hand-written depthwise kernels (:mod:`jdw.kernels.pallas_depthwise`).

What runs where is decided by the platform the call is *lowered* for
(:func:`jax.lax.platform_dependent`), so a function exported from a CPU machine carries
the right kernel for its target:

======== ============================================ ==========================================
platform kernel                                       why
======== ============================================ ==========================================
TPU      Mosaic TPU, compiled                         Pallas's native TPU path
CUDA     Triton, compiled                             runs on every NVIDIA GPU (T4 to H100);
                                                      Mosaic GPU (the default for Hopper) only
                                                      accepts arrays of 128-element multiples
                                                      and blocked, non-overlapping tiles
ROCm     Triton, compiled                             the same kernels (lowering tested; not
                                                      compiled in CI, which has no ROCm plugin)
other    Pallas interpreter (TPU kernels, or the      for tests: slow, exact
         GPU ones with ``interpret_mode``)
======== ============================================ ==========================================

Derivatives: ``pallas_call`` has none, so the kernels are wrapped as the primitives of
:mod:`jdw.backends.primitives`, whose derivatives are one another; ``grad``, ``jvp``,
``hessian`` and every higher order run on the kernels:

* the input gradient is the transposed convolution: the same forward kernel applied to
  the stride-dilated cotangent with the flipped kernel (the GPU kernel reads the cotangent
  where it is, masking the dilation's holes; on TPU XLA dilates it first);
* the kernel gradient is its own kernel, reduced over batch and space;
* the bias gradient is a sum in XLA; with a fused activation, the activation's derivative
  is read from the output for relu, relu6 and hard_sigmoid, and otherwise taken in XLA on
  the pre-activation output, which the forward pass then computes too (the same kernel
  without the activation);
* ``vmap`` folds a stack of inputs into the batch and anything else into the channels.

Under ``jit`` with a mesh, batch and channel axes stay sharded and every device runs the
kernel on its shard (the kernel gradient's partial sums are reduced by XLA), so no input
is gathered: with an ``Auto`` mesh each kernel call is partitioned with
:func:`jax.experimental.custom_partitioning`; with an ``Explicit`` mesh (sharding in
types) the call goes through :func:`jax.shard_map` on the arguments' own shardings.

:func:`jdw.causal_conv1d` of a chunk that continues a state runs on GPU and TPU through a kernel
of its own (:mod:`jdw.kernels.pallas_causal`, see :func:`causal_conv`), which reads the state in
place. It is not partitioned yet: under a mesh, XLA gathers its operands onto each device.

1-D runs as 2-D on one row; 3-D as a sum over depth taps of 2-D calls (``kd`` passes over
the input, not tuned).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning

from jdw.backends import primitives, registry
from jdw.geometry import Geometry
from jdw.kernels import pallas_causal
from jdw.kernels import pallas_depthwise as kernels

_INTERPRET: contextvars.ContextVar[tuple[Any, str]] = contextvars.ContextVar(
    "jdw_pallas_interpret", default=(True, "tpu")
)


@contextlib.contextmanager
def interpret_mode(params: Any, target: str = "tpu") -> Iterator[None]:
    """How the kernels run on platforms without a compiled path (CPU): ``True`` (Pallas's
    plain interpreter, the default) or ``jax.experimental.pallas.tpu.InterpretParams()``
    (the TPU interpreter, which also models TPU memory spaces and DMA semantics), running
    the kernels of ``target``: ``"tpu"`` (the default) or ``"triton"`` (the GPU kernels,
    with the plain interpreter only).

    Read when a function is traced, so use it around the first call (or ``jit`` trace).

    Examples:
      >>> import jax.numpy as jnp, jdw
      >>> from jax.experimental.pallas import tpu as pltpu
      >>> with jdw.backends.pallas.interpret_mode(pltpu.InterpretParams()):
      ...     y = jdw.depthwise_conv(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 1, 4)), implementation="pallas")
      >>> float(y[0, 4, 4, 0])
      9.0
    """
    kernels._check_target(target)
    if target == "triton" and params is not True:
        raise ValueError("the GPU (triton) kernels run in the plain interpreter only: interpret_mode(True, 'triton')")
    token = _INTERPRET.set((params, target))
    try:
        yield
    finally:
        _INTERPRET.reset(token)


@dataclasses.dataclass(frozen=True)
class _Call:
    """The static part of one 2-D kernel call."""

    layer: kernels.Layer
    activation: str
    out_dtype: str
    interpret: Any
    partition: bool = True  # False inside shard_map, where every array is already the local shard
    interpret_target: str = "tpu"  # the kernels the interpreter runs off TPU and GPU


_PLATFORM_OF_TARGET = {"tpu": "tpu", "triton": "gpu"}  # jax.default_backend() names both CUDA and ROCm "gpu"


def _tpu_dtype_problem(*arrays) -> str | None:
    """Why the TPU kernels cannot take these arrays' dtypes, or ``None``. Mosaic compiles no float16
    vector loads (TPUs have no float16 arithmetic): the kernels take float32 and bfloat16, and float16
    gets XLA instead of a failure deep in Mosaic."""
    dtypes = sorted({np.dtype(a.dtype).name for a in arrays if a is not None and hasattr(a, "dtype")})
    return f"the TPU kernels take float32 or bfloat16, got {', '.join(dtypes)}" if "float16" in dtypes else None


def _check_tpu_dtypes(*arrays) -> None:
    """Raises ``ValueError`` with :func:`_tpu_dtype_problem`'s reason, if any."""
    problem = _tpu_dtype_problem(*arrays)
    if problem:
        raise ValueError(problem)


def _on_platform(fn, fallback, *args, layer: kernels.Layer, batch: int, interpret: Any, interpret_target="tpu"):
    """``fn(*args, target=..., interpret=...)`` with the target chosen by the lowering platform.

    :func:`lax.platform_dependent` traces every platform's branch, so each target's block
    rules are checked here, not inside the kernels: a target that cannot serve ``layer``
    gets ``fallback(*args)`` (XLA) in its branch instead of failing the others' trace. When
    that target is the platform this process computes on, the call raises instead, with
    what the caller can change: ``implementation="pallas"`` was asked for explicitly.
    """

    def branch(target: str, interpret: Any):
        try:
            if target == "tpu" and not interpret:
                _check_tpu_dtypes(*args)
            blocks = kernels.BlockSizes.default(layer, target, batch)
            blocks.check(layer, target, memory=not interpret, batch=batch)
        except ValueError as error:
            if not interpret and jax.default_backend() == _PLATFORM_OF_TARGET[target]:
                raise ValueError(
                    f'implementation="pallas" cannot serve {layer} on {jax.default_backend()}: {error}. '
                    'Use implementation=None (automatic) or "xla" for this layer.'
                ) from None
            return fallback
        return functools.partial(fn, target=target, interpret=interpret)

    return lax.platform_dependent(
        *args,
        tpu=branch("tpu", False),
        cuda=branch("triton", False),
        rocm=branch("triton", False),
        default=branch(interpret_target, interpret),
    )


# --- kernel calls, partitioned over batch and channels ---------------------------------------------


def _named(mesh, *spec) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))


def _batch_and_channel_axes(sharding: Any) -> tuple[Any, Any]:
    """The mesh axes of a channels-last 4-D operand's batch and channel dims (spatial dims are never split)."""
    spec = tuple(getattr(sharding, "spec", ())) + (None,) * 4
    return spec[0], spec[3]


def _partitioned(impl, num_args: int, sharding_rule: str, kernel_like: tuple[int, ...]):
    """``impl`` wrapped so that under a mesh each device runs it on its batch and channel shard.

    Operand 0 decides the sharding: its batch and channel axes are kept, spatial axes are
    replicated; operands listed in ``kernel_like`` (kernel, bias) are split on channels only.
    """
    wrapped = custom_partitioning(impl)

    def shardings(mesh, arg_shapes):
        batch, channels = _batch_and_channel_axes(arg_shapes[0].sharding)
        args = []
        for i, shape in enumerate(arg_shapes[:num_args]):
            rank = len(shape.shape)
            spec = (None,) * (rank - 1) + (channels,) if i in kernel_like else (batch, *(None,) * (rank - 2), channels)
            args.append(_named(mesh, *spec))
        return tuple(args), _named(mesh, batch, None, None, channels)

    def partition(mesh, arg_shapes, result_shape):
        args, out = shardings(mesh, arg_shapes)
        return mesh, impl, out, args

    wrapped.def_partition(
        infer_sharding_from_operands=lambda mesh, arg_shapes, result_shape: shardings(mesh, arg_shapes)[1],
        partition=partition,
        sharding_rule=sharding_rule,
    )
    return wrapped


def _forward_local(call: _Call, x, kernel, bias):
    layer = dataclasses.replace(call.layer, channels=x.shape[-1], itemsize=x.dtype.itemsize)
    fn = functools.partial(kernels.forward, layer=layer, activation=call.activation, out_dtype=call.out_dtype)

    def fallback(x, k, b):
        acc = kernels.accumulator_dtype(x.dtype)
        y = kernels.reference(x.astype(acc), k.astype(acc), layer) + b.astype(acc).reshape(1, 1, 1, -1)
        return kernels.EPILOGUES[call.activation](y).astype(call.out_dtype)

    return _on_platform(
        fn,
        fallback,
        x,
        kernel,
        bias,
        layer=layer,
        batch=x.shape[0],
        interpret=call.interpret,
        interpret_target=call.interpret_target,
    )


def _kernel_grad_local(call: _Call, x, dy):
    """Per-image kernel gradients ``(N, kh, kw, C)`` (float32, or float64); the caller sums over images."""
    layer = dataclasses.replace(call.layer, channels=x.shape[-1], itemsize=x.dtype.itemsize)
    fn = functools.partial(kernels.kernel_grad, layer=layer, per_image=True)
    local = dataclasses.replace(call, layer=layer)

    def fallback(x, dy):  # per image, like the kernel: every platform's branch returns the same shape
        return jax.vmap(lambda x, dy: _xla_kernel_grad(x[None], dy[None], local))(x, dy)

    return _on_platform(
        fn,
        fallback,
        x,
        dy,
        layer=layer,
        batch=x.shape[0],
        interpret=call.interpret,
        interpret_target=call.interpret_target,
    )


@functools.lru_cache(maxsize=256)
def _forward_op(call: _Call):
    """The forward kernel call ``(x, kernel, bias) -> y``, partitioned under a mesh."""
    impl = functools.partial(_forward_local, call)
    if call.partition:
        impl = _partitioned(impl, 3, "n h w c, i j c, c -> n p q c", kernel_like=(1, 2))
    return impl


@functools.lru_cache(maxsize=256)
def _kernel_grad_op(call: _Call):
    """The kernel-gradient call ``(x, dy) -> (N, kh, kw, C)``, partitioned under a mesh."""
    impl = functools.partial(_kernel_grad_local, call)
    if call.partition:
        impl = _partitioned(impl, 2, "n h w c, n p q c -> n i j c", kernel_like=())
    return impl


# --- the differentiable 2-D maps (jdw.backends.primitives) -------------------------------------


def _fused_map(x, kernel, bias, *, static: _Call, dtype, activation: str) -> jax.Array:
    """``activation(conv(x, kernel) + bias)``; ``x`` ``(N, H, W, C)``, ``kernel`` ``(kh, kw, C)``, ``bias`` ``(C,)``."""
    call = dataclasses.replace(static, activation=activation, out_dtype=np.dtype(dtype).name)
    return _forward_op(call)(x, kernel.astype(x.dtype), bias.astype(x.dtype))


def _forward_map(x, kernel, *, static: _Call, dtype) -> jax.Array:
    return _fused_map(
        x, kernel, jnp.zeros(kernel.shape[-1:], x.dtype), static=static, dtype=dtype, activation="identity"
    )


def _adjoint_call(call: _Call, dtype) -> _Call:
    """The convolution that computes the input gradient: stride 1 over the cotangent dilated by the strides.

    The kernels take the dilation as the layer's ``input_dilation`` (the GPU kernel reads the
    cotangent where it is, the TPU kernel has XLA dilate it first), with the padding of the
    transposed convolution (negative where it crops; :meth:`jdw.geometry.Geometry.adjoint`).
    """
    adjoint = kernels.Layer.from_geometry(
        call.layer.geometry.adjoint(), channels=call.layer.channels, itemsize=np.dtype(dtype).itemsize
    )
    return dataclasses.replace(call, layer=adjoint, activation="identity", out_dtype=np.dtype(dtype).name)


def _transpose_map(dy, kernel, *, static: _Call, dtype) -> jax.Array:
    """The adjoint in ``x`` of the forward map: the forward kernel, flipped, over the dilated ``dy``."""
    dtype = np.dtype(dtype)
    adjoint = _adjoint_call(static, dtype)
    zeros = jnp.zeros(kernel.shape[-1:], dtype)
    return _forward_op(adjoint)(dy.astype(dtype), lax.rev(kernel.astype(dtype), (0, 1)), zeros)


def _kernel_grad_map(x, dy, *, static: _Call, dtype) -> jax.Array:
    """The adjoint in the kernel: ``d<dy, conv(x, k)>/dk`` as ``(kh, kw, C)``, summed in float32 (or float64)."""
    return jnp.sum(_kernel_grad_op(static)(x, dy.astype(x.dtype)), axis=0).astype(dtype)


def _xla_kernel_grad(x, dy, call: _Call) -> jax.Array:
    layer = call.layer
    kernel = jnp.zeros((*layer.kernel_size, x.shape[-1]), x.dtype)
    _, vjp = jax.vjp(lambda k: kernels.reference(x, k, layer), kernel)
    return vjp(dy.astype(x.dtype))[0].astype(kernels.accumulator_dtype(x.dtype))


OPS = primitives.LinearOps(
    "pallas",
    forward=_forward_map,
    transpose=_transpose_map,
    kernel_grad=_kernel_grad_map,
    fused=_fused_map,
    epilogues=kernels.EPILOGUES,
    requires_devices=True,
)


# --- the backend interface ------------------------------------------------------------------------


def _explicit_axes(x, kernel) -> tuple[Any, Any, Any] | None:
    """The mesh and ``x``'s batch and channel axes when ``x`` is typed with explicit axes, else ``None``."""
    mesh = jax.typeof(x).sharding.mesh
    if not registry.explicit_mesh(mesh):
        mesh = jax.sharding.get_abstract_mesh()
    if not registry.explicit_mesh(mesh):
        return None
    return mesh, *registry.sharded_axes(x, kernel)


def conv_bias_act(
    x, kernel, bias, geometry: Geometry, *, activation, precision=None, preferred_element_type=None
) -> jax.Array:
    """Depthwise convolution, bias and activation in one kernel. ``precision`` is unused (float32 products)."""
    del precision
    activation = activation or "identity"
    if activation not in kernels.EPILOGUES:
        raise ValueError(f"the pallas kernels fuse {sorted(kernels.EPILOGUES)}, not {activation!r}")
    nd = geometry.num_spatial
    if nd == 3:
        return _conv3d(x, kernel, bias, geometry, activation, preferred_element_type)
    if nd > 3:
        raise NotImplementedError(f"the pallas backend serves 1-D, 2-D and 3-D depthwise convolutions, not {nd}-D")
    plane = geometry.as_2d()  # 1-D runs as 2-D on one row
    x2 = x[:, None] if nd == 1 else x
    kernel2 = kernel.reshape(plane.kernel_size + kernel.shape[-1:])
    linear = bias is None and activation == "identity"  # then a linear primitive, which transposes
    bias = jnp.zeros(kernel.shape[-1:], x.dtype) if bias is None else bias.astype(x.dtype)
    out_dtype = np.dtype(preferred_element_type or x.dtype).name
    axes = _explicit_axes(x, kernel)

    def local(x, kernel, bias):
        multiplier = kernel.shape[-1] // x.shape[-1]
        if multiplier > 1:
            x = jnp.repeat(x, multiplier, axis=-1)  # output channel c*M + m reads input channel c
        layer = kernels.Layer.from_geometry(plane, channels=kernel.shape[-1], itemsize=x.dtype.itemsize)
        params, target = _INTERPRET.get()
        call = _Call(layer, activation, out_dtype, params, partition=axes is None, interpret_target=target)
        if linear:
            return primitives.conv(x, kernel, ops=OPS, static=call, dtype=out_dtype)
        return primitives.conv_bias_act(x, kernel, bias, ops=OPS, static=call, dtype=out_dtype, activation=activation)

    if axes is None:
        y = local(x2, kernel2, bias)
    else:  # explicit axes: the shardings are known now, so split by hand (autodiff adds the psum)
        mesh, batch, channels = axes
        P = jax.sharding.PartitionSpec
        specs = (P(batch, None, None, channels), P(None, None, channels), P(channels))
        args = [
            jax.sharding.reshard(a, jax.sharding.NamedSharding(mesh, spec))
            for a, spec in zip((x2, kernel2, bias), specs)
        ]
        # check_vma=False: the Pallas interpreter (CPU) cannot track varying axes yet (jax 0.10).
        # The kernel and bias are unmapped over the batch axes, so shard_map's transpose sums their
        # per-device gradients (an all-reduce of kh*kw*C numbers).
        y = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=specs[0], check_vma=False)(*args)
    return y[:, 0] if nd == 1 else y


def _conv3d(x, kernel, bias, geometry: Geometry, activation, preferred_element_type) -> jax.Array:
    """3-D as a sum over depth taps of 2-D kernel calls, each on all output depths folded into the batch.

    Reads the input once per depth tap (``kd`` passes instead of one): correct and
    differentiable through the 2-D kernel, not tuned.
    """
    (low, high), kd, sd, dd = geometry.padding[0], geometry.kernel_size[0], geometry.strides[0], geometry.dilation[0]
    out_depth = geometry.output_size[0]
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (low, high, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0)])
    n, _, h, w, c = x.shape
    total = None
    for t in range(kd):
        planes = lax.slice_in_dim(x, t * dd, t * dd + (out_depth - 1) * sd + 1, stride=sd, axis=1)
        y = conv_bias_act(
            planes.reshape(n * out_depth, h, w, c),
            kernel[t],
            bias if t == 0 else None,
            geometry.drop_leading(),
            activation=None,
            preferred_element_type=kernels.accumulator_dtype(x.dtype),
        )
        total = y if total is None else total + y
    out_dtype = np.dtype(preferred_element_type or x.dtype)
    total = kernels.EPILOGUES[activation](total).astype(out_dtype)
    return total.reshape(n, out_depth, *total.shape[1:])


def conv(x, kernel, geometry: Geometry, *, precision=None, preferred_element_type=None) -> jax.Array:
    """Depthwise convolution with the Pallas kernel (see the module docstring for what runs where)."""
    return conv_bias_act(
        x, kernel, None, geometry, activation=None, precision=precision, preferred_element_type=preferred_element_type
    )


def conv_transpose(y, kernel, geometry: Geometry, *, precision=None, preferred_element_type=None) -> jax.Array:
    """Transposed depthwise convolution, channel ``c`` -> ``c*M + m``: the adjoint of a multiplier-1 :func:`conv`."""
    del precision
    nd = geometry.num_spatial
    multiplier = kernel.shape[-1] // y.shape[-1]
    out_dtype = np.dtype(preferred_element_type or y.dtype)
    if multiplier > 1:
        y = jnp.repeat(y, multiplier, axis=-1)
    if nd == 3:  # the adjoint of the 3-D forward (a sum of 2-D calls): its VJP, through the 2-D kernels
        grid = jnp.zeros((y.shape[0], *geometry.input_size, kernel.shape[-1]), out_dtype)
        forward = functools.partial(
            _conv3d,
            kernel=kernel.astype(out_dtype),
            bias=None,
            geometry=geometry,
            activation="identity",
            preferred_element_type=out_dtype,
        )
        _, vjp = jax.vjp(forward, grid)
        return vjp(y.astype(out_dtype))[0]
    if nd > 3:
        raise NotImplementedError(f"the pallas backend serves 1-D, 2-D and 3-D depthwise convolutions, not {nd}-D")
    plane = geometry.as_2d()
    layer = kernels.Layer.from_geometry(plane, channels=kernel.shape[-1], itemsize=y.dtype.itemsize)
    params, target = _INTERPRET.get()
    call = _Call(layer, "identity", out_dtype.name, params, interpret_target=target)
    kernel2 = kernel.reshape(plane.kernel_size + kernel.shape[-1:])
    out = primitives.conv_transpose(y[:, None] if nd == 1 else y, kernel2, ops=OPS, static=call, dtype=out_dtype)
    return out[:, 0] if nd == 1 else out


# --- causal conv1d on GPU and TPU: the state (and on GPU the segment positions) read in place -----


@dataclasses.dataclass(frozen=True)
class _Causal:
    dilation: int
    activation: str
    out_dtype: str
    interpret: Any  # False, or how the interpreter runs the kernel (True, or pltpu.InterpretParams on TPU)
    target: str = "triton"


def _causal_kernel(x, kernel, bias, state, reach, static: _Causal):
    options = dict(
        dilation=static.dilation, activation=static.activation, out_dtype=static.out_dtype, interpret=static.interpret
    )
    if static.target == "tpu":
        return pallas_causal.tpu_forward(x, kernel[:, 0], bias, state, **options)
    return pallas_causal.forward(x, kernel[:, 0], bias, state, reach, **options)


def _with_derivatives_of(kernel, composed):
    """``kernel`` when nothing differentiates it, else ``composed`` (both compute the same function).

    Differentiated, the whole call is ``composed``'s: the depthwise kernels and their own
    derivatives on the chunk with its state in front, or ``"taps"``'s masked tap sums for packed
    rows. Training needs that chunk with its state in front anyway, and ``composed``'s forward
    leaves its derivatives the residuals they need, so it moves fewer bytes than the kernel's
    forward followed by ``composed``'s derivatives, which would compute the forward twice.
    """

    @jax.custom_jvp
    def run(x, kernel_, bias, state, reach):
        return kernel(x, kernel_, bias, state, reach)

    run.defjvp(lambda primals, tangents: jax.jvp(composed, primals, tangents))
    return run


def causal_conv(x, kernel, bias, state, reach, *, dilation: int, activation: str | None, out_dtype, fallback):
    """:func:`jdw.causal_conv1d` on GPU and TPU as one Pallas kernel (:mod:`jdw.kernels.pallas_causal`).

    For a chunk that continues a state: the kernel reads the chunk and the state (on GPU also
    the segment positions) where they are stored and fuses the bias and the activation, where
    the composed path first concatenates the state in front of the chunk (a pass over ``x``).
    Differentiated, the call is the composed path's (:func:`_with_derivatives_of`). Without a
    state, for a depth multiplier, for an activation that is not a kernel epilogue, or for
    packed rows on TPU, ``fallback`` (the depthwise kernels, or the masked tap sums for packed
    rows) runs instead; off GPU and TPU the interpreter runs the kernel of the target
    :func:`interpret_mode` names.
    """
    name = activation or "identity"
    # Without a state the composed path already moves x and y once forward (the depthwise kernel, or
    # one XLA fusion for packed rows) and less in training (its derivatives need no chunk with a state
    # in front): the kernel serves chunks that continue a state (see the sequences guide).
    if state is None or kernel.shape[-1] != x.shape[-1] or name not in kernels.EPILOGUES or x.size == 0:
        return fallback(x, kernel, bias, state, reach)
    params, target = _INTERPRET.get()
    arrays = (x, kernel, bias, state, reach)

    def kernel_on(target, interpret):
        if target == "tpu" and (reach is not None or _tpu_dtype_problem(x, kernel, bias, state)):
            return fallback
        static = _Causal(dilation, name, np.dtype(out_dtype).name, interpret, target)
        return _with_derivatives_of(functools.partial(_causal_kernel, static=static), fallback)

    # platform_dependent passes arrays only: the absent operands (None) stay in the branches' closures.
    present = [i for i, a in enumerate(arrays) if a is not None]

    def unpacked(branch):
        def run(*given):
            full = list(arrays)
            for i, a in zip(present, given):
                full[i] = a
            return branch(*full)

        return run

    return lax.platform_dependent(
        *(arrays[i] for i in present),
        tpu=unpacked(kernel_on("tpu", False)),
        cuda=unpacked(kernel_on("triton", False)),
        rocm=unpacked(kernel_on("triton", False)),
        default=unpacked(kernel_on(target, params)),
    )


BACKEND = registry.register(
    registry.Backend(
        name="pallas",
        conv=conv,
        conv_transpose=conv_transpose,
        conv_bias_act=conv_bias_act,
        fused_activations=frozenset(kernels.EPILOGUES),
        causal_conv=causal_conv,
        description="hand-written Pallas kernel (Mosaic TPU, Triton GPU, interpreter elsewhere), own derivatives",
    )
)
