"""An independent NumPy reference for depthwise convolution, written from the formula.

``y[n, o, c*M + m] = sum_t xpad[n, o*stride + t*dilation, c] * k[t, 0, c*M + m]``

Loops over output positions and kernel taps, in float64; shares no code with jdw.
"""

from __future__ import annotations

import itertools

import numpy as np

NP_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def explicit_padding(padding, spatial, kernel_size, strides, dilation):
    """SAME / VALID / CAUSAL / int / pairs -> pairs (TensorFlow's SAME: extra on the high side)."""
    nd = len(spatial)
    if isinstance(padding, str):
        if padding == "VALID":
            return [(0, 0)] * nd
        if padding == "CAUSAL":
            return [(dilation[0] * (kernel_size[0] - 1), 0)]
        pads = []
        for n, k, s, d in zip(spatial, kernel_size, strides, dilation):
            out = int(np.ceil(n / s))
            need = max(0, (out - 1) * s + d * (k - 1) + 1 - n)
            pads.append((need // 2, need - need // 2))
        return pads
    if isinstance(padding, int):
        return [(padding, padding)] * nd
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def _spatial(nd):
    return tuple(range(1, nd + 1))


def depthwise_conv(x, kernel, bias=None, *, strides, padding, dilation, padding_mode="zeros"):
    """x: (N, *spatial, C); kernel: (*k, 1, C*M); padding: explicit pairs."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    nd = x.ndim - 2
    channels, out_channels = x.shape[-1], kernel.shape[-1]
    mult = out_channels // channels
    xp = np.pad(x, [(0, 0), *padding, (0, 0)], mode=NP_MODES[padding_mode])
    ksize = kernel.shape[:nd]
    out_sp = [(xp.shape[1 + i] - dilation[i] * (ksize[i] - 1) - 1) // strides[i] + 1 for i in range(nd)]
    y = np.zeros((x.shape[0], *out_sp, out_channels))
    for o in itertools.product(*map(range, out_sp)):
        for t in itertools.product(*map(range, ksize)):
            pos = tuple(o[i] * strides[i] + t[i] * dilation[i] for i in range(nd))
            y[(slice(None), *o)] += np.repeat(xp[(slice(None), *pos)], mult, axis=-1) * kernel[(*t, 0)]
    if bias is not None:
        y += np.asarray(bias, np.float64)
    return y


def _unpad_adjoint(dxp, spatial, padding, padding_mode):
    """Maps a gradient w.r.t. the padded input back to the input (adjoint of np.pad)."""
    nd = len(spatial)
    if padding_mode == "zeros":
        index = tuple(slice(lo, lo + n) for n, (lo, _) in zip(spatial, padding))
        return dxp[(slice(None), *index)]
    source = np.pad(np.arange(int(np.prod(spatial))).reshape(spatial), padding, mode=NP_MODES[padding_mode])
    flat = np.zeros((dxp.shape[0], int(np.prod(spatial)), dxp.shape[-1]))
    np.add.at(flat, (slice(None), source.reshape(-1)), dxp.reshape(dxp.shape[0], -1, dxp.shape[-1]))
    del nd
    return flat.reshape((dxp.shape[0], *spatial, dxp.shape[-1]))


def depthwise_conv_vjp(x, kernel, dy, *, strides, padding, dilation, padding_mode="zeros"):
    """Gradients (dx, dkernel, dbias) of ``sum(dy * depthwise_conv(x, kernel, bias))``."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    dy = np.asarray(dy, np.float64)
    nd = x.ndim - 2
    channels, out_channels = x.shape[-1], kernel.shape[-1]
    mult = out_channels // channels
    xp = np.pad(x, [(0, 0), *padding, (0, 0)], mode=NP_MODES[padding_mode])
    ksize = kernel.shape[:nd]
    dxp = np.zeros_like(xp)
    dk = np.zeros_like(kernel)
    for o in itertools.product(*map(range, dy.shape[1:-1])):
        g = dy[(slice(None), *o)]  # (N, C*M)
        for t in itertools.product(*map(range, ksize)):
            pos = tuple(o[i] * strides[i] + t[i] * dilation[i] for i in range(nd))
            contrib = (g * kernel[(*t, 0)]).reshape(g.shape[0], channels, mult).sum(-1)
            dxp[(slice(None), *pos)] += contrib
            dk[(*t, 0)] += (np.repeat(xp[(slice(None), *pos)], mult, axis=-1) * g).sum(0)
    dx = _unpad_adjoint(dxp, x.shape[1:-1], padding, padding_mode)
    return dx, dk, dy.reshape(-1, out_channels).sum(0)


def depthwise_conv_transpose(x, kernel, bias=None, *, strides, padding, dilation, output_spatial):
    """Scatter form: each input element spreads ``x[o, c] * k[t, c*M+m]`` to ``o*stride + t*dilation - low``."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    nd = x.ndim - 2
    channels, out_channels = x.shape[-1], kernel.shape[-1]
    mult = out_channels // channels
    ksize = kernel.shape[:nd]
    full = [
        max((x.shape[1 + i] - 1) * strides[i] + dilation[i] * (ksize[i] - 1) + 1, padding[i][0] + output_spatial[i])
        for i in range(nd)
    ]
    yp = np.zeros((x.shape[0], *full, out_channels))
    for o in itertools.product(*map(range, x.shape[1:-1])):
        for t in itertools.product(*map(range, ksize)):
            pos = tuple(o[i] * strides[i] + t[i] * dilation[i] for i in range(nd))
            yp[(slice(None), *pos)] += np.repeat(x[(slice(None), *o)], mult, axis=-1) * kernel[(*t, 0)]
    y = yp[(slice(None), *(slice(lo, lo + n) for (lo, _), n in zip(padding, output_spatial)))]
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y
