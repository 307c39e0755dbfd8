"""Orbax checkpoints in the workdir, and the guard that a resumed run is the same run.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run
killed mid-save leaves the previous checkpoint as the latest usable one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from .config import Config

# Fields that may change between a run and its resumption without changing the result.
_RESUMABLE_CHANGES = {"data_dir", "checkpoint_every"}


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (disk full, workdir removed or read-only)."""


class Checkpoints:
    """The checkpoints of one run in ``workdir/checkpoints`` (the last two are kept).

    Creating it writes ``workdir/config.json``. When the workdir already holds a checkpoint,
    it checks instead that ``config`` is the same run and raises ``ValueError`` naming the
    differences otherwise (a ``config.json`` with no checkpoint beside it is replaced).
    """

    def __init__(self, workdir: pathlib.Path, config: Config, *, max_to_keep: int = 2):
        workdir.mkdir(parents=True, exist_ok=True)
        self.directory = (workdir / "checkpoints").resolve()
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        )
        check_same_run(workdir / "config.json", config, resuming=self._manager.latest_step() is not None)

    def restore_latest(self, state: Any) -> Any:
        """The newest complete checkpoint, placed like ``state``; ``state`` itself when there is none."""
        step = self._manager.latest_step()
        if step is None:
            return state
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
        return self._manager.restore(step, args=ocp.args.StandardRestore(target))

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or ``None``."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any) -> None:
        """Starts saving ``state`` as step ``step`` in the background (no-op if that step is saved).

        Raises:
          CheckpointError: this save, or the previous one still in flight, failed.
        """
        with self._failures(step):
            if step not in self._manager.all_steps():
                self._manager.save(step, args=ocp.args.StandardSave(state))

    def close(self) -> None:
        """Waits for saves in flight to finish.

        Raises:
          CheckpointError: a save failed.
        """
        with self._failures(None):
            self._manager.wait_until_finished()
        self._manager.close()

    @contextlib.contextmanager
    def _failures(self, step: int | None):
        """Turns a failed write into one paragraph naming the folder and the checkpoint kept."""
        try:
            yield
        except Exception as error:
            for partial in self.directory.glob("*.orbax-checkpoint-tmp*"):
                shutil.rmtree(partial, ignore_errors=True)
            lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
            cause = next((line for line in lines if "RESOURCE_EXHAUSTED" in line or "rror writing" in line), lines[0])
            latest = self._manager.latest_step()
            kept = f"the checkpoint of step {latest} is kept" if latest is not None else "no earlier checkpoint exists"
            what = f"the checkpoint of step {step}" if step is not None else "a checkpoint"
            raise CheckpointError(
                f"could not write {what} in {self.directory} ({cause[:300]}); {kept}. Free some space (or use "
                "another --workdir) and rerun the same command to resume."
            ) from None


def check_same_run(path: pathlib.Path, config: Config, *, resuming: bool = True) -> None:
    """Writes ``config`` to ``path``, or, when ``resuming`` a run, checks it equals the one there."""
    current = dataclasses.asdict(config)
    if resuming and path.exists():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); delete the workdir or fix the file") from error
        changed = sorted(
            name
            for name in set(saved) | set(current)
            if name not in _RESUMABLE_CHANGES and saved.get(name) != current.get(name)
        )
        if changed:
            differences = ", ".join(f"{name}: {saved.get(name)!r} there, {current.get(name)!r} now" for name in changed)
            raise ValueError(
                f"{path.parent} holds a different run ({differences}); use another --workdir to start a new run"
            )
    elif jax.process_index() == 0:
        path.write_text(json.dumps(current, indent=2) + "\n")
