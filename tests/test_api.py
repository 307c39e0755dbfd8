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
