"""The training command line: ``python -m jdw.training --help`` (also ``examples/train_mobilenet.py``).

With no flags it trains MobileNetV2 (width 0.5) on scikit-learn's bundled handwritten digits,
offline, in a few minutes on a 2-core CPU. The same command runs on GPU and TPU (the batch is
split over every device) and, with ``--multihost``, on pod slices. Rerunning it with the same
``--workdir`` resumes from the last checkpoint.
"""

from __future__ import annotations

import sys

import jax

from . import allocator, checkpoints, config, data, reporting, train

# What a user can fix gets one line and exit status 1, not a traceback: data that cannot be
# read, a batch larger than the data, a workdir that cannot be written, a diverged run.
USER_ERRORS = (data.DataError, ValueError, OSError, checkpoints.CheckpointError, train.TrainingError)


def main(argv: list[str] | None = None) -> dict:
    """Parses ``argv``, trains and evaluates, prints the summary and returns it."""
    cfg, flags = config.parse_flags(argv)
    if flags.multihost:
        jax.distributed.initialize()
    if jax.process_index() == 0 and jax.default_backend() == "cpu" and (note := allocator.advice()):
        print(note, file=sys.stderr)
    try:
        summary = train.train_and_evaluate(cfg, flags.workdir, progress=not flags.no_progress)
    except USER_ERRORS as error:
        raise SystemExit(f"{config.PROG}: error: {error}") from None
    if jax.process_index() == 0:
        print(reporting.format_summary(summary))
        print(f"metrics: {flags.workdir}/metrics.jsonl, plot: {flags.workdir}/metrics.png")
    return summary


def run() -> None:
    """The command (``jdw-train``, ``python -m jdw.training``, the example script): :func:`main` on
    ``sys.argv``, restarted under tcmalloc first where one is installed (:mod:`jdw.training.allocator`)."""
    allocator.restart_under_tcmalloc()
    main(sys.argv[1:])
