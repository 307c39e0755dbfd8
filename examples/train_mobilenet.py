"""Train a jdw MobileNet: ``python examples/train_mobilenet.py --help``.

With no flags it trains MobileNetV2 (width 0.5) on scikit-learn's bundled handwritten digits,
offline, in a few minutes on a 2-core CPU. The same command runs on GPU and TPU (the batch is
split over every device) and, with ``--multihost``, on pod slices. Rerunning it with the same
``--workdir`` resumes from the last checkpoint. The logic lives in :mod:`jdw.training`
(``python -m jdw.training`` is the same command). On Linux it restarts itself under tcmalloc
when one is installed (:mod:`jdw.training.allocator`: about 1.3x faster steps on CPU).
"""

from jdw.training.cli import main, run  # noqa: F401 (main: for callers that pass their own argv)

if __name__ == "__main__":
    run()
