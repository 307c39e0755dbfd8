"""The README's Python examples run as written (Keras and torchvision ImageNet weights replaced by random ones:
no network here)."""

from __future__ import annotations

import pathlib
import re

import jax
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        source = (
            BLOCKS[index].replace('weights="imagenet"', "weights=None").replace('weights="DEFAULT"', "weights=None")
        )
        if "import torch" in source or "torchvision" in source:  # the torch extra (not in the floors' test-core)
            pytest.importorskip("torchvision")
        exec(compile(source, f"README.md python block {index}", "exec"), {})
