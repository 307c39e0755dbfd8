"""Training a jdw MobileNet with optax: data, configuration, pure train/eval steps, checkpoints, reports.

``examples/train_mobilenet.py`` is its command line (``python -m jdw.training`` is the same one),
and the Colab notebook imports it after ``pip install "jdw[examples]"``. It needs the ``examples``
extra (optax, orbax-checkpoint, scikit-learn, matplotlib, tqdm, pillow); ``import jdw`` alone does
not import it.
"""
