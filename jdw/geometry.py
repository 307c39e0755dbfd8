"""The geometry of a depthwise convolution: one value for its shape, shared by every layer of jdw.

A :class:`Geometry` holds what fixes which inputs each output of a convolution reads:
the input's spatial size, the kernel's, the strides, the explicit zero padding, the
kernel dilation and the input dilation. The functions in :mod:`jdw.functional` validate
a user's arguments into one, the backends (:mod:`jdw.backends`) compute from one, and the
Pallas kernels build their own small description from one. The two formulas every
convolution library gets wrong somewhere live here once: the output size
(:func:`output_size`) and the padding of the transposed convolution
(:func:`transpose_padding`, used by :meth:`Geometry.adjoint`).

This module imports nothing from jdw, so every layer of the library can import it.

Examples:
  >>> from jdw.geometry import Geometry
  >>> g = Geometry(input_size=(7, 7), kernel_size=(3, 3), strides=2, padding=((1, 1), (1, 1)))
  >>> g.output_size
  (4, 4)
  >>> g.adjoint()  # the input gradient: stride 1 over the cotangent dilated by 2
  Geometry(input_size=(4, 4), kernel_size=(3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), dilation=(1, 1), \
input_dilation=(2, 2))
  >>> g.adjoint().output_size
  (7, 7)
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence

__all__ = ["Geometry", "output_size", "span", "transpose_padding"]

Pairs = tuple[tuple[int, int], ...]


def span(kernel: int, dilation: int = 1) -> int:
    """How many input positions a dilated kernel covers: ``(kernel - 1) * dilation + 1``."""
    return (kernel - 1) * dilation + 1


def output_size(
    n: int, padding: tuple[int, int], kernel: int, stride: int = 1, dilation: int = 1, input_dilation: int = 1
) -> int:
    """Output length of a convolution along one dimension (``lax.conv_general_dilated``'s rule).

    ``input_dilation`` puts ``input_dilation - 1`` zeros between input elements (``lhs_dilation``);
    ``padding`` may be negative (a crop). The result is below 1 when no window fits.

    Examples:
      >>> output_size(7, (1, 1), kernel=3, stride=2)
      4
      >>> output_size(4, (1, 1), kernel=3, input_dilation=2)  # the transposed convolution of the above
      7
    """
    low, high = padding
    return ((n - 1) * input_dilation + 1 + low + high - span(kernel, dilation)) // stride + 1


def transpose_padding(n_in: int, n_out: int, kernel: int, stride: int, dilation: int, low: int) -> tuple[int, int]:
    """Padding of a transposed convolution, as a stride-1 convolution over the stride-dilated cotangent.

    For a forward convolution of an ``n_in``-long input with ``low`` padding on the low side
    giving ``n_out`` outputs, the adjoint (the gradient in the input) convolves the cotangent,
    dilated by ``stride``, with the flipped kernel at stride 1 and this ``(low, high)``
    padding; it gives back ``n_in`` positions. Entries are negative where the adjoint crops
    (outputs of the forward convolution that read only padding).

    Examples:
      >>> transpose_padding(n_in=8, n_out=4, kernel=3, stride=2, dilation=1, low=0)  # "SAME", stride 2
      (2, 1)
    """
    return span(kernel, dilation) - 1 - low, n_in - (n_out - 1) * stride - 1 + low


def _ints(value: int | Sequence[int] | None, n: int, default: int, name: str) -> tuple[int, ...]:
    if value is None:
        return (default,) * n
    if isinstance(value, Sequence):
        values = tuple(operator.index(v) for v in value)
    else:
        values = (operator.index(value),) * n
    if len(values) != n:
        raise ValueError(f"Geometry: {name} must have one entry per spatial dimension ({n}), got {value!r}")
    return values


@dataclasses.dataclass(frozen=True)
class Geometry:
    """The static shape of one convolution over channels-last input, padding included.

    Frozen and hashable, so it can be a static argument of ``jit`` or a primitive's
    parameter. Integers and sequences are normalised on construction: ``strides=2`` is
    ``(2, 2)`` in 2-D, a missing ``padding`` is no padding, a missing dilation is 1.

    Attributes:
      input_size: the input's spatial size, one entry per spatial dimension.
      kernel_size: the kernel's spatial size.
      strides: the output stride.
      padding: explicit ``(low, high)`` zero padding (negative entries crop).
      dilation: the kernel dilation (``rhs_dilation``).
      input_dilation: zeros between input elements (``lhs_dilation``), 1 for an ordinary
        convolution; set by :meth:`adjoint`.
    """

    input_size: tuple[int, ...]
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...] = None  # type: ignore[assignment]
    padding: Pairs = None  # type: ignore[assignment]
    dilation: tuple[int, ...] = None  # type: ignore[assignment]
    input_dilation: tuple[int, ...] = None  # type: ignore[assignment]

    def __post_init__(self):
        nd = len(self.kernel_size)
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("input_size", _ints(self.input_size, nd, 1, "input_size"))
        set_("kernel_size", _ints(self.kernel_size, nd, 1, "kernel_size"))
        set_("strides", _ints(self.strides, nd, 1, "strides"))
        set_("dilation", _ints(self.dilation, nd, 1, "dilation"))
        set_("input_dilation", _ints(self.input_dilation, nd, 1, "input_dilation"))
        padding = ((0, 0),) * nd if self.padding is None else tuple(self.padding)
        if len(padding) != nd:
            raise ValueError(f"Geometry: padding must have one (low, high) pair per spatial dimension, got {padding}")
        set_("padding", tuple((operator.index(lo), operator.index(hi)) for lo, hi in padding))
        for name in ("kernel_size", "strides", "dilation", "input_dilation"):
            if any(v < 1 for v in getattr(self, name)):
                raise ValueError(f"Geometry: {name} must be positive, got {getattr(self, name)}")
        if any(n < 1 for n in self.input_size) or any(n < 1 for n in self.output_size):
            raise ValueError(f"Geometry: {self} has an empty input or output (output size {self.output_size})")

    @property
    def num_spatial(self) -> int:
        """The number of spatial dimensions."""
        return len(self.kernel_size)

    @property
    def kernel_span(self) -> tuple[int, ...]:
        """Input positions one window covers per dimension: ``(kernel - 1) * dilation + 1``."""
        return tuple(span(k, d) for k, d in zip(self.kernel_size, self.dilation))

    @property
    def output_size(self) -> tuple[int, ...]:
        """The output's spatial size."""
        return tuple(
            output_size(n, p, k, s, d, i)
            for n, p, k, s, d, i in zip(
                self.input_size, self.padding, self.kernel_size, self.strides, self.dilation, self.input_dilation
            )
        )

    def adjoint(self) -> Geometry:
        """The geometry of the transposed convolution (the gradient in the input), with the kernel flipped.

        It runs at stride 1 over the cotangent (this geometry's output) dilated by the
        strides (``input_dilation``), with :func:`transpose_padding`; its output size is this
        geometry's input size.

        Raises:
          ValueError: if this geometry already dilates its input.
        """
        if self.input_dilation != (1,) * self.num_spatial:
            raise ValueError(f"Geometry.adjoint: {self} dilates its input; only ordinary convolutions are transposed")
        padding = tuple(
            transpose_padding(n, o, k, s, d, low)
            for n, o, k, s, d, (low, _) in zip(
                self.input_size, self.output_size, self.kernel_size, self.strides, self.dilation, self.padding
            )
        )
        return Geometry(
            input_size=self.output_size,
            kernel_size=self.kernel_size,
            strides=(1,) * self.num_spatial,
            padding=padding,
            dilation=self.dilation,
            input_dilation=self.strides,
        )

    def as_2d(self) -> Geometry:
        """This geometry as a 2-D one, for kernels that run 1-D as 2-D on one row.

        Raises:
          ValueError: for more than two spatial dimensions.
        """
        if self.num_spatial == 2:
            return self
        if self.num_spatial != 1:
            raise ValueError(f"Geometry.as_2d: {self.num_spatial}-D has no 2-D form")
        return Geometry(
            input_size=(1, *self.input_size),
            kernel_size=(1, *self.kernel_size),
            strides=(1, *self.strides),
            padding=((0, 0), *self.padding),
            dilation=(1, *self.dilation),
            input_dilation=(1, *self.input_dilation),
        )

    def drop_leading(self, count: int = 1) -> Geometry:
        """The geometry of the trailing spatial dimensions (a 3-D convolution as 2-D slices)."""
        return Geometry(
            input_size=self.input_size[count:],
            kernel_size=self.kernel_size[count:],
            strides=self.strides[count:],
            padding=self.padding[count:],
            dilation=self.dilation[count:],
            input_dilation=self.input_dilation[count:],
        )

    def split_padding(self) -> tuple[tuple[tuple[int, int, int], ...], Pairs]:
        """The input dilation and crops as a ``lax.pad`` config, and the zero padding left to the convolution.

        Returns ``(config, padding)``: ``config`` holds one ``(low, high, interior)`` triple per
        spatial dimension for ``lax.pad`` (non-positive ends: crops; ``interior``: the input
        dilation), ``padding`` the non-negative ``(low, high)`` zero padding that a backend
        can fuse into its loop. Where the crops would consume the whole dilated input (an
        output that reads only padding), all of the padding goes into ``config``.

        Examples:
          >>> Geometry(input_size=(1,), kernel_size=(2,), strides=3, padding=((3, 0),)).adjoint().split_padding()
          (((-2, 3, 2),), ((0, 0),))
        """
        config, zeros = [], []
        for n, d, (lo, hi) in zip(self.input_size, self.input_dilation, self.padding):
            if (n - 1) * d + 1 + min(lo, 0) + min(hi, 0) < 1:
                config.append((lo, hi, d - 1))
                zeros.append((0, 0))
            else:
                config.append((min(lo, 0), min(hi, 0), d - 1))
                zeros.append((max(lo, 0), max(hi, 0)))
        return tuple(config), tuple(zeros)

    def __str__(self) -> str:
        size = "x".join(map(str, self.input_size))
        parts = [f"kernel {self.kernel_size}", f"strides {self.strides}", f"padding {self.padding}"]
        if self.dilation != (1,) * self.num_spatial:
            parts.append(f"dilation {self.dilation}")
        if self.input_dilation != (1,) * self.num_spatial:
            parts.append(f"input dilation {self.input_dilation}")
        return f"a {size} convolution ({', '.join(parts)})"
