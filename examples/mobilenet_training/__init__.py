"""Training a jdw MobileNet with optax: data, configuration, pure train/eval steps, checkpoints, reports.

``examples/train_mobilenet.py`` is the command line; this package holds the logic so tests and
notebooks can import it (``sys.path`` must include ``examples/``).
"""
