"""Hand-written kernels: the C++ loops for XLA:CPU behind the ``"cpu"`` backend and batch norm's sums
(``cpu_*``), and the Pallas kernels behind the ``"pallas"`` backend (``pallas_*``)."""
