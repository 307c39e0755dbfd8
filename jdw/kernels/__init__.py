"""Hand-written kernels (Pallas) behind the ``"pallas"`` backend."""
