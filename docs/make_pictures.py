"""Generates the documentation's pictures from jdw's own computation.

    python docs/make_pictures.py                      # all pictures, benchmark included (a few minutes on CPU)
    python docs/make_pictures.py --bench-json b.json  # benchmark charts from saved `python -m jdw.bench --json`
    python docs/make_pictures.py --quick              # small benchmark, for a smoke test

Writes into ``docs/images/`` (or ``--out``):

* ``depthwise_vs_standard.gif``: a 3x3 depthwise convolution sweeping an RGB image,
  each channel with its own kernel, beside a standard convolution whose every output
  mixes all three channels. Every frame's numbers come from ``jdw.depthwise_conv`` and
  ``lax.conv_general_dilated``.
* ``cost_params.png``, ``cost_macs.png``: parameters and multiply-adds of a 3x3 standard
  convolution against a depthwise-separable one, across channel counts (``jdw.cost``).
* ``bench_forward.png``, ``bench_backward.png``: milliseconds per backend on MobileNetV2's
  depthwise layers, from ``python -m jdw.bench --json``.
* ``causal_receptive_field.png``: which inputs each output of ``jdw.causal_conv1d`` reads
  (kernel 4, a carried state, two packed sequences): the nonzeros of its Jacobian.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import matplotlib
import numpy as np
from jax import lax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import animation  # noqa: E402

import jdw  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
CHANNEL_COLORS = ("#d62728", "#2ca02c", "#1f77b4")


def _image(size: int = 12) -> np.ndarray:
    """A small RGB test card: a red disc, a green bar and a blue gradient, in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    red = ((xx - 0.35) ** 2 + (yy - 0.4) ** 2 < 0.08).astype(np.float32)
    green = ((np.abs(xx - 0.7) < 0.12) & (yy > 0.2)).astype(np.float32)
    blue = (0.2 + 0.8 * yy * xx).astype(np.float32)
    return np.stack([red, green, blue], axis=-1)


def _kernels() -> tuple[np.ndarray, np.ndarray]:
    """Per-channel 3x3 kernels (edge, blur, sharpen) and a 3x3x3 standard kernel mixing all three."""
    edge = np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], np.float32) / 4
    blur = np.ones((3, 3), np.float32) / 9
    sharpen = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32)
    depthwise = np.stack([edge, blur, sharpen], axis=-1)[:, :, None, :]  # (3, 3, 1, 3)
    standard = np.stack([edge, blur, sharpen], axis=-1)[:, :, :, None] / 3  # (3, 3, 3, 1): one output channel
    return depthwise, standard


def depthwise_animation(path: pathlib.Path, size: int = 10) -> None:
    """Frames of the sweep: the 3x3 window moving over each channel, and the outputs filling in."""
    x = _image(size)
    depthwise, standard = _kernels()
    dw = np.asarray(jdw.depthwise_conv(jnp.asarray(x)[None], jnp.asarray(depthwise), padding="VALID"))[0]
    std = np.asarray(
        lax.conv_general_dilated(
            jnp.asarray(x)[None], jnp.asarray(standard), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    )[0, :, :, 0]
    out = size - 2
    positions = [(i, j) for i in range(out) for j in range(out)]
    fig, axes = plt.subplots(2, 4, figsize=(11, 5.4))
    fig.suptitle("depthwise: each channel, its own 3x3 kernel  |  standard: every output mixes all channels")
    names = ("red * edge", "green * blur", "blue * sharpen")

    def draw(frame: int):
        i, j = positions[frame]
        mask = np.zeros((out, out), bool)
        for k, (a, b) in enumerate(positions):
            if k <= frame:
                mask[a, b] = True
        for c in range(3):
            ax = axes[0, c]
            ax.clear()
            ax.imshow(x[:, :, c], cmap="gray", vmin=0, vmax=1)
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 3, 3, fill=False, ec=CHANNEL_COLORS[c], lw=2.5))
            ax.set_title(f"input channel {c}", color=CHANNEL_COLORS[c])
            ax.axis("off")
            ax = axes[1, c]
            ax.clear()
            ax.imshow(
                np.where(mask, dw[:, :, c], np.nan), cmap="viridis", vmin=dw[:, :, c].min(), vmax=dw[:, :, c].max()
            )
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="white", lw=2))
            ax.set_title(f"output channel {c} = {names[c]}", fontsize=9)
            ax.axis("off")
        ax = axes[0, 3]
        ax.clear()
        ax.imshow(x)
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 3, 3, fill=False, ec="black", lw=2.5))
        ax.set_title("RGB input, all 3 channels")
        ax.axis("off")
        ax = axes[1, 3]
        ax.clear()
        ax.imshow(np.where(mask, std, np.nan), cmap="magma", vmin=std.min(), vmax=std.max())
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="white", lw=2))
        ax.set_title("standard 3x3x3 conv: channels mixed", fontsize=9)
        ax.axis("off")
        return []

    fig.tight_layout()
    movie = animation.FuncAnimation(fig, draw, frames=len(positions), blit=False)
    movie.save(path, writer=animation.PillowWriter(fps=8))
    plt.close(fig)


def cost_charts(params_path: pathlib.Path, macs_path: pathlib.Path) -> None:
    """Parameters and multiply-adds of 3x3 standard vs depthwise-separable convolutions, C -> C, on 56x56."""
    channels = [16, 32, 64, 128, 256, 512, 1024]
    comparisons = [jdw.cost.compare(c, c, 3, 56) for c in channels]
    for path, attribute, label in ((params_path, "params", "parameters"), (macs_path, "macs", "multiply-adds")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        standard = [getattr(cmp.standard, attribute) for cmp in comparisons]
        separable = [getattr(cmp.separable, attribute) for cmp in comparisons]
        ax.loglog(channels, standard, "o-", label="standard 3x3 convolution")
        ax.loglog(channels, separable, "s-", label="depthwise-separable (3x3 depthwise + 1x1)")
        for c, s, d in zip(channels, standard, separable):
            ax.annotate(f"{s / d:.1f}x", (c, d), textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8)
        ax.set_xlabel("channels in = channels out")
        ax.set_ylabel(label + (" (56x56 output)" if attribute == "macs" else ""))
        ax.set_title(f"{label}: standard vs depthwise-separable (jdw.cost)")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def bench_charts(records: list[dict], forward_path: pathlib.Path, backward_path: pathlib.Path) -> None:
    """Bar charts of ``python -m jdw.bench --json`` records: ms per layer and backend."""
    layers = list(dict.fromkeys(r["layer"] for r in records))
    implementations = list(dict.fromkeys(r["implementation"] for r in records))
    platform = records[0].get("platform", "?")
    for path, part, title in (
        (forward_path, "forward_ms", "forward"),
        (backward_path, "forward_backward_ms", "forward + backward"),
    ):
        fig, ax = plt.subplots(figsize=(8, 4.2))
        width = 0.8 / len(implementations)
        for k, name in enumerate(implementations):
            values = [
                next(r[part] for r in records if r["layer"] == layer and r["implementation"] == name)
                for layer in layers
            ]
            ax.bar(np.arange(len(layers)) + k * width, values, width, label=name)
        ax.set_xticks(np.arange(len(layers)) + width * (len(implementations) - 1) / 2, layers, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("ms (log scale, lower is better)")
        ax.set_title(f"{title}: MobileNetV2 depthwise layers, batch {records[0]['batch']}, {platform}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def causal_receptive_field(path: pathlib.Path, length: int = 12, width: int = 4) -> None:
    """The Jacobian of ``jdw.causal_conv1d`` (one channel, all-ones kernel) over the state and the tokens."""
    import jax  # noqa: PLC0415

    segment_ids = jnp.asarray([[0] * 7 + [1] * (length - 7)])
    kernel = jnp.ones((width, 1, 1))

    def f(state, x):
        return jdw.causal_conv1d(x, kernel, initial_state=state, segment_ids=segment_ids)[0, :, 0]

    d_state, d_x = jax.jacobian(f, argnums=(0, 1))(jnp.zeros((1, width - 1, 1)), jnp.zeros((1, length, 1)))
    reads = np.concatenate([np.asarray(d_state)[:, 0, :, 0], np.asarray(d_x)[:, 0, :, 0]], axis=1) != 0
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    sequence_a = (np.asarray(segment_ids[0]) == 0)[:, None, None]
    color = np.where(sequence_a, np.array([0.12, 0.47, 0.71]), np.array([1.0, 0.5, 0.05]))
    ax.imshow(np.where(reads[..., None], color, 0.95), aspect="equal")
    ax.axvline(width - 1.5, color="k", lw=1)
    ax.axvline(width - 1 + 6.5, color="gray", lw=1, ls="--")
    ax.axhline(6.5, color="gray", lw=1, ls="--")
    labels = [f"s{-i}" for i in range(width - 1, 0, -1)] + [str(t) for t in range(length)]
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_yticks(range(length), [str(t) for t in range(length)], fontsize=8)
    ax.set_xlabel("input read: carried state (s-3..s-1), then tokens 0..11")
    ax.set_ylabel("output token")
    ax.set_title(
        f"causal_conv1d, kernel {width}: sequence A (tokens 0-6) continues the state,\n"
        "sequence B (tokens 7-11) is packed after it and sees none of A",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run_bench(quick: bool) -> list[dict]:
    args = [sys.executable, "-m", "jdw.bench", "--json"]
    if quick:
        args += ["--batch", "2", "--layers", "14x14x384/s1,7x7x960/s1", "--repeats", "1"]
    else:
        args += ["--batch", "8", "--repeats", "3"]
    output = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "images", help="where the pictures go")
    parser.add_argument("--bench-json", type=pathlib.Path, help="saved `python -m jdw.bench --json` output")
    parser.add_argument("--quick", action="store_true", help="a tiny benchmark (smoke test)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    depthwise_animation(args.out / "depthwise_vs_standard.gif")
    cost_charts(args.out / "cost_params.png", args.out / "cost_macs.png")
    causal_receptive_field(args.out / "causal_receptive_field.png")
    records = json.loads(args.bench_json.read_text()) if args.bench_json else _run_bench(args.quick)
    bench_charts(records, args.out / "bench_forward.png", args.out / "bench_backward.png")
    for path in sorted(args.out.iterdir()):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
