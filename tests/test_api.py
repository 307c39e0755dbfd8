"""The public API: importable, documented, with runnable examples."""

from __future__ import annotations

import inspect

import jdw
import jdw.backends
import jdw.functional
import jdw.initializers
import jdw.linen
import jdw.nnx

PUBLIC_MODULES = (jdw, jdw.functional, jdw.backends, jdw.initializers, jdw.nnx, jdw.linen)


def test_public_names_are_exported():
    for name in ["depthwise_conv", "depthwise_conv_transpose", "pointwise_conv", "separable_conv"]:
        assert name in jdw.__all__
        assert getattr(jdw, name) is getattr(jdw.functional, name)


def test_every_public_name_has_a_docstring():
    for module in PUBLIC_MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"


def test_functions_have_examples_and_args_sections():
    for name in jdw.functional.__all__:
        doc = inspect.getdoc(getattr(jdw.functional, name))
        assert "Args:" in doc and "Returns:" in doc and "Examples:" in doc and ">>>" in doc, name


def test_layers_document_every_option_with_an_example():
    for module, section in ((jdw.nnx, "Args:"), (jdw.linen, "Attributes:")):
        assert module.__all__ == [name for name in jdw.nnx.__all__]
        for name in module.__all__:
            cls = getattr(module, name)
            doc = inspect.getdoc(cls)
            assert section in doc and "Examples:" in doc and ">>>" in doc, f"{module.__name__}.{name}"
            if module is jdw.nnx:
                options = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
            else:
                options = [
                    f.name for f in cls.__dataclass_fields__.values() if f.init and f.name not in ("parent", "name")
                ]
            documented = doc.split(section, 1)[1]
            missing = [o for o in options if f"  {o}:" not in documented]
            assert not missing, f"{module.__name__}.{name} does not document {missing}"


def test_import_jdw_leaves_pallas_unimported():
    """``import jdw`` is light: the Pallas backend (and ``jax.experimental.pallas``) load on first use."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, jdw, jax.numpy as jnp\n"
        "heavy = ('jax.experimental.pallas', 'jdw.backends.pallas', 'jdw.kernels.pallas_depthwise')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert 'pallas' in jdw.backends.available()\n"
        "jdw.depthwise_conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 1, 2)), implementation='pallas')\n"
        "assert 'jdw.backends.pallas' in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu")
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_typing_names_the_argument_types():
    import typing

    import jdw.typing

    assert typing.get_args(jdw.typing.PaddingMode) == ("zeros", "reflect", "replicate", "circular")
    assert typing.get_args(jdw.typing.DataFormat) == ("channels_last", "channels_first")
    for name in jdw.typing.__all__:
        assert getattr(jdw.typing, name) is not None
