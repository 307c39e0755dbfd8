"""Training-step benchmark: jdw's MobileNet against the same network built from Flax's grouped Conv.

    python examples/bench_training.py                      # MobileNetV2, width 0.5, 32x32, batch 64
    python examples/bench_training.py --image-size 224 --small-inputs false --batch-size 32 --json
    python examples/bench_training.py --compare torch      # and torchvision's MobileNetV2 in PyTorch

Both networks have the same parameters (copied) and run the example's own jitted train step
(forward, backward, optimizer update); images per second are measured in one run, alternating
between the networks, so the ratio holds on a noisy machine. With ``--compare torch`` (MobileNetV2
only; needs ``pip install "jdw[torch]"``) torchvision's ``mobilenet_v2`` with the
same width, classes and stride adaptation trains beside them: channels-last tensors, SGD with
Nesterov momentum, label-smoothed cross-entropy, as many threads as JAX uses.

On Linux the script starts itself again under tcmalloc where one is installed, as ``jdw-train``
does (glibc's malloc maps XLA:CPU's step memory afresh every step; see the training guide), and
prints which malloc it ran under; ``JDW_TCMALLOC=0`` keeps the system's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from jdw.training import allocator, config, flax_baseline, train


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


def torch_mobilenet_v2(width: float, num_classes: int, small_inputs: bool, channels: int):
    """torchvision's MobileNetV2, adapted as jdw's ``small_inputs``: stride 1 in the stem and first stride-2 stage."""
    import torch
    import torchvision

    model = torchvision.models.mobilenet_v2(width_mult=width, num_classes=num_classes, dropout=0.0)
    if channels != 3:
        stem = model.features[0][0]
        model.features[0][0] = torch.nn.Conv2d(channels, stem.out_channels, 3, stem.stride, 1, bias=False)
    if small_inputs:
        model.features[0][0].stride = (1, 1)
        first = next(block for block in model.features[1:] if getattr(block, "stride", 1) == 2)
        first.stride = 1
        for conv in first.modules():
            if isinstance(conv, torch.nn.Conv2d) and conv.stride == (2, 2):
                conv.stride = (1, 1)
    return model.to(memory_format=torch.channels_last)


class TorchStep:
    """PyTorch's training step for ``model``: forward, label-smoothed cross-entropy, backward, SGD."""

    def __init__(self, model, images: np.ndarray, labels: np.ndarray, cfg: config.Config):
        import torch

        self.torch, self.model = torch, model.train()
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        self.labels = torch.from_numpy(labels).long()
        self.optimizer = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum, nesterov=True)
        self.label_smoothing = cfg.label_smoothing

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(self.images)
        loss = self.torch.nn.functional.cross_entropy(logits, self.labels, label_smoothing=self.label_smoothing)
        loss.backward()
        self.optimizer.step()

    def measure(self, *, steps: int) -> float:
        """Seconds per step over ``steps`` steps."""
        start = time.perf_counter()
        for _ in range(steps):
            self()
        return (time.perf_counter() - start) / steps


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
    p.add_argument("--compare", choices=["torch"], help="also train torchvision's network in PyTorch (MobileNetV2)")
    args = p.parse_args(argv)
    if args.compare == "torch" and args.model != "mobilenet_v2":
        p.error(f"--compare torch builds torchvision's mobilenet_v2, not {args.model}")

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
    torch_step = None
    if args.compare == "torch":
        import torch

        torch.set_num_threads(os.cpu_count() or 1)  # XLA:CPU uses every core too
        torch_model = torch_mobilenet_v2(args.width, 10, args.small_inputs, args.channels)
        torch_params = sum(p.numel() for p in torch_model.parameters())
        jdw_params = train.count_parameters(states["jdw"].params)
        if torch_params != jdw_params:
            raise AssertionError(f"torchvision's network has {torch_params} parameters, jdw's {jdw_params}")
        torch_step = TorchStep(torch_model, images, labels, cfg)
        torch_step()  # the first step allocates
        timings["torch (torchvision, channels_last)"] = []
    for _ in range(args.repeats):
        for name in networks:
            timings[name] += measure(
                steps[name], jax.tree.map(lambda a: a.copy(), states[name]), batch, steps=args.steps, repeats=1
            )
        if torch_step is not None:
            timings["torch (torchvision, channels_last)"].append(torch_step.measure(steps=args.steps))
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
            "malloc": "tcmalloc" if allocator.tcmalloc_loaded() else "system",
            "ms_per_step": 1e3 * min(t),
            "images_per_second": args.batch_size / min(t),
            "speedup": baseline / min(t),
            **({"speedup_vs_torch": min(timings["torch (torchvision, channels_last)"]) / min(t)} if torch_step else {}),
        }
        for name, t in timings.items()
    ]
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        print(
            f"{args.model} width {args.width}, {args.image_size}x{args.image_size}x{args.channels}, batch "
            f"{args.batch_size}, {jax.device_count()} {jax.devices()[0].platform} device(s); train step "
            f"(forward + backward + SGD), best of {args.repeats}x{args.steps} steps; {records[0]['malloc']} malloc"
        )
        torch_head = f" {'vs torch':>9s}" if torch_step else ""
        print(f"{'network':40s} {'ms/step':>9s} {'images/s':>9s} {'speedup':>8s}{torch_head}")
        for r in records:
            vs_torch = f" {r['speedup_vs_torch']:8.2f}x" if torch_step else ""
            print(
                f"{r['network']:40s} {r['ms_per_step']:9.1f} {r['images_per_second']:9.1f} {r['speedup']:7.2f}x"
                + vs_torch
            )
    return records


if __name__ == "__main__":
    # Under tcmalloc where one is installed, as `jdw-train` runs (jdw.training.allocator; the
    # training guide measures why); JDW_TCMALLOC=0 keeps the system's malloc.
    allocator.restart_under_tcmalloc()
    main(sys.argv[1:])
