"""What a person watching a run sees: a progress bar, metrics.jsonl, a plot, a final summary."""

from __future__ import annotations

import json
import pathlib
import sys
import time
from typing import Any

import jax


def _is_writer() -> bool:
    return jax.process_index() == 0


class MetricsWriter:
    """Appends one JSON object per record to ``path``.

    Args:
      path: the ``metrics.jsonl`` file.
      keep_up_to_step: records of later steps are dropped first; they come from a run that
        was interrupted after its last checkpoint and will be written again.
    """

    def __init__(self, path: pathlib.Path, *, keep_up_to_step: int):
        self.path = path
        self._records = []
        if path.exists():
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    if number == len(path.read_text().splitlines()):  # a line cut short by a kill
                        break
                    raise ValueError(f"{path}:{number} is not JSON: {line[:80]!r}") from None
                if record.get("step", 0) <= keep_up_to_step:
                    self._records.append(record)
        if _is_writer():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in self._records))

    def write(self, record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 3), **record}
        self._records.append(record)
        if _is_writer():
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        return list(self._records)


def plot(records: list[dict[str, Any]], path: pathlib.Path) -> None:
    """Loss and accuracy per epoch, train and test, as a PNG."""
    if not _is_writer():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = lambda key: ([r["epoch"] for r in records if key in r], [r[key] for r in records if key in r])
    fig, (loss, accuracy) = plt.subplots(1, 2, figsize=(10, 4))
    for axes, metric in ((loss, "loss"), (accuracy, "accuracy")):
        for split, style in (("train", "-"), ("eval", "--")):
            axes.plot(
                *series(f"{split}_{metric}"),
                style,
                marker="o",
                markersize=3,
                label="test" if split == "eval" else "train",
            )
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
        axes.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_summary(summary: dict[str, Any], path: pathlib.Path) -> None:
    if _is_writer():
        path.write_text(json.dumps(summary, indent=2) + "\n")


def format_summary(summary: dict[str, Any]) -> str:
    """The final lines a run prints."""
    speed = summary["images_per_second"]
    status = "finished" if summary["finished"] else "stopped"
    return (
        f"{status} at step {summary['step']}: test accuracy {summary['test_accuracy']:.2%} "
        f"(loss {summary['test_loss']:.4f}); {summary['train_seconds']:.1f} s training"
        + (f", {speed:.0f} images/s" if speed else "")
        + f" on {summary['devices']} {summary['platform']} device(s)"
    )


class Progress:
    """A progress bar over training steps with images per second (tqdm), or nothing.

    A step counts when its results are ready, not when it is dispatched: :meth:`update` takes an
    array the step computes and waits for the step before it, so one step stays queued on the
    device while the host prepares the next, and the bar's images/s is the rate steps finish at.
    """

    def __init__(self, total: int, initial: int, *, enabled: bool):
        self._bar = None
        if enabled and _is_writer():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)
        self._pending = None
        self._images, self._since = 0, time.perf_counter()

    def restart_clock(self) -> None:
        """Starts the images/s clock again (after compiling or evaluating)."""
        self._images, self._since = 0, time.perf_counter()

    def update(self, images: int, result: Any = None) -> None:
        """Counts the step before this one once its result is ready; this one (``images``, ``result``) waits."""
        if self._bar is None:
            return
        if self._pending is not None:
            self._finish(*self._pending)
        self._pending = (images, result)

    def flush(self) -> None:
        """Waits for the step still queued and counts it."""
        if self._bar is not None and self._pending is not None:
            self._finish(*self._pending)
            self._pending = None

    def _finish(self, images: int, result: Any) -> None:
        jax.block_until_ready(result)
        self._images += images
        self._bar.update(1)
        elapsed = time.perf_counter() - self._since
        if elapsed > 1.0:
            self._bar.set_postfix_str(f"{self._images / elapsed:.0f} img/s")
            self.restart_clock()

    def write(self, line: str) -> None:
        if not _is_writer():
            return
        if self._bar is None:
            print(line, flush=True)
        else:
            self._bar.write(line)

    def close(self) -> None:
        self.flush()
        if self._bar is not None:
            self._bar.close()
