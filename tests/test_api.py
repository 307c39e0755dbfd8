"""The public API: importable, documented, with runnable examples."""

from __future__ import annotations

import inspect

import jdw
import jdw.backends
import jdw.functional


def test_public_names_are_exported():
    for name in ["depthwise_conv", "depthwise_conv_transpose", "pointwise_conv", "separable_conv"]:
        assert name in jdw.__all__
        assert getattr(jdw, name) is getattr(jdw.functional, name)


def test_every_public_name_has_a_docstring():
    for module in (jdw, jdw.functional, jdw.backends):
        for name in module.__all__:
            obj = getattr(module, name)
            assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"


def test_functions_have_examples_and_args_sections():
    for name in jdw.functional.__all__:
        doc = inspect.getdoc(getattr(jdw, name))
        assert "Args:" in doc and "Returns:" in doc and "Example:" in doc and ">>>" in doc, name
