"""Training-step benchmark: jdw's MobileNet against the same network built from Flax's grouped Conv.

    python examples/bench_training.py                      # MobileNetV2, width 0.5, 32x32, batch 64
    python examples/bench_training.py --image-size 224 --small-inputs false --batch-size 32 --json

Both networks have the same parameters (copied) and run the example's own jitted train step
(forward, backward, optimizer update); images per second are measured in one run, alternating
between the two, so the ratio holds on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np

from jdw.training import config, flax_baseline, train


def measure(step, state, batch, *, steps: int, repeats: int) -> list[float]:
    """Seconds per step, one figure per repeat of ``steps`` steps (after one compiling step)."""
    state, _ = step(state, *batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, *batch)
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - start) / steps)
    return times


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenet_v2", choices=sorted(config.MODELS))
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--small-inputs", type=config._bool, default=True)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--implementation", default="auto", choices=["auto", *__import__("jdw").backends.available()])
    p.add_argument("--steps", type=int, default=5, help="steps per timing")
    p.add_argument("--repeats", type=int, default=3, help="timings per network, alternating; the best is kept")
    p.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    args = p.parse_args(argv)

    cfg = config.Config(
        model=args.model,
        width=args.width,
        image_size=args.image_size,
        small_inputs=args.small_inputs,
        batch_size=args.batch_size,
        implementation=None if args.implementation == "auto" else args.implementation,
        optimizer="sgd",
        dropout=0.0,
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (args.batch_size, args.image_size, args.image_size, args.channels)).astype(np.float32)
    labels = rng.integers(0, 10, args.batch_size).astype(np.int32)
    placement = train.Placement.over()
    batch = placement.global_batch(images, labels)
    jdw_model = train.create_model(cfg, 10, args.channels)
    networks = {
        "jdw": jdw_model,
        "flax nnx.Conv(feature_group_count=C)": flax_baseline.with_flax_grouped_conv(jdw_model),
    }
    steps, states = {}, {}
    for name, model in networks.items():
        tx, schedule = train.create_optimizer(cfg, 100)
        graphdef, state = train.create_train_state(model, tx, ema=False)
        steps[name] = train.jit_steps(cfg, graphdef, tx, schedule, placement)[0]
        states[name] = jax.device_put(state, placement.replicated)
    timings = {name: [] for name in networks}
    for _ in range(args.repeats):
        for name in networks:
            timings[name] += measure(
                steps[name], jax.tree.map(lambda a: a.copy(), states[name]), batch, steps=args.steps, repeats=1
            )
    baseline = min(timings["flax nnx.Conv(feature_group_count=C)"])
    records = [
        {
            "network": name,
            "model": args.model,
            "width": args.width,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "platform": jax.devices()[0].platform,
            "devices": jax.device_count(),
            "ms_per_step": 1e3 * min(t),
            "images_per_second": args.batch_size / min(t),
            "speedup": baseline / min(t),
        }
        for name, t in timings.items()
    ]
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        print(
            f"{args.model} width {args.width}, {args.image_size}x{args.image_size}x{args.channels}, batch "
            f"{args.batch_size}, {jax.device_count()} {jax.devices()[0].platform} device(s); train step "
            f"(forward + backward + SGD), best of {args.repeats}x{args.steps} steps"
        )
        print(f"{'network':40s} {'ms/step':>9s} {'images/s':>9s} {'speedup':>8s}")
        for r in records:
            print(f"{r['network']:40s} {r['ms_per_step']:9.1f} {r['images_per_second']:9.1f} {r['speedup']:7.2f}x")
    return records


if __name__ == "__main__":
    main(sys.argv[1:])
