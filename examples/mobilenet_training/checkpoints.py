"""Orbax checkpoints in the workdir, and the guard that a resumed run is the same run.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run
killed mid-save leaves the previous checkpoint as the latest usable one.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from .config import Config

# Fields that may change between a run and its resumption without changing the result.
_RESUMABLE_CHANGES = {"data_dir", "checkpoint_every"}


class Checkpoints:
    """The checkpoints of one run in ``workdir/checkpoints`` (the last two are kept).

    Creating it writes ``workdir/config.json``, or, when one is already there, checks that
    ``config`` is the same run and raises ``ValueError`` naming the differences otherwise.
    """

    def __init__(self, workdir: pathlib.Path, config: Config, *, max_to_keep: int = 2):
        workdir.mkdir(parents=True, exist_ok=True)
        check_same_run(workdir / "config.json", config)
        self.directory = (workdir / "checkpoints").resolve()
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        )

    def restore_latest(self, state: Any) -> Any:
        """The newest complete checkpoint, placed like ``state``; ``state`` itself when there is none."""
        step = self._manager.latest_step()
        if step is None:
            return state
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
        return self._manager.restore(step, args=ocp.args.StandardRestore(target))

    def save(self, step: int, state: Any) -> None:
        """Starts saving ``state`` as step ``step`` in the background (no-op if that step is saved)."""
        if step not in self._manager.all_steps():
            self._manager.save(step, args=ocp.args.StandardSave(state))

    def close(self) -> None:
        """Waits for saves in flight to finish."""
        self._manager.wait_until_finished()
        self._manager.close()


def check_same_run(path: pathlib.Path, config: Config) -> None:
    """Writes ``config`` to ``path``, or checks it equals the one there."""
    current = dataclasses.asdict(config)
    if path.exists():
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
