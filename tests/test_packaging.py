"""Packaging: the declared dependency floors are the tested ones, and the package carries what users need."""

import importlib.metadata
import pathlib
import re

import pytest

import jdw

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _floors_declared():
    project = PYPROJECT["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["examples"]
    return dict(re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", r).groups() for r in requirements)


def _floors_tested():
    lines = (ROOT / ".ci" / "floors.txt").read_text().splitlines()
    pins = [line.split("#")[0].strip() for line in lines]
    return dict(pin.split("==") for pin in pins if pin)


def test_every_pinned_floor_is_a_declared_floor_and_the_core_ones_are_all_pinned():
    declared, tested = _floors_declared(), _floors_tested()
    for name, version in tested.items():
        assert declared.get(name) == version, f"{name}: .ci/floors.txt tests {version}, pyproject declares {declared}"
    for name in ("jax", "jaxlib", "flax", "numpy", "optax", "orbax-checkpoint"):
        assert name in tested, f"{name}>={declared[name]} is declared but .ci/floors.txt does not test it"


def test_version_metadata_and_typing_marker():
    assert jdw.__version__ == importlib.metadata.version("jdw")
    assert (pathlib.Path(jdw.__file__).parent / "py.typed").exists()
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0" and (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert "Typing :: Typed" in project["classifiers"] and project["urls"]["Source"].startswith("https://")
    assert project["scripts"]["jdw-train"] == "jdw.training.cli:run"


def test_the_ci_script_builds_checks_and_tests_the_wheel_at_the_floors():
    run = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" && python -m pytest -n auto tests jdw' in run  # the README's command
    assert "python -m build" in run and "twine check --strict" in run and ".ci/check_package" in run
    check = (ROOT / ".ci" / "check_package").read_text()
    assert "-c .ci/floors.txt" in check and "floor_tests.txt" in check
    listed = [line for line in (ROOT / ".ci" / "floor_tests.txt").read_text().splitlines() if line and line[0] != "#"]
    assert listed and all((ROOT / path.split("::")[0]).exists() for path in listed)


def test_the_cpu_extension_builds_from_the_sdist():
    """setup.py compiles jdw/kernels/cpu_depthwise.cc (and its loops, one translation unit per instruction set)
    against the XLA FFI headers that ship with jaxlib: jaxlib is a build requirement, and the C++ sources are in
    the sdist (MANIFEST.in), which the wheel is built from."""
    assert any(r.startswith("jaxlib") for r in PYPROJECT["build-system"]["requires"])
    manifest = (ROOT / "MANIFEST.in").read_text()
    setup = (ROOT / "setup.py").read_text()
    assert "jdw/kernels/cpu_depthwise.cc" in manifest and "jdw/kernels/cpu_depthwise_loops.inc" in manifest
    assert "jdw/kernels/cpu_parallel.h" in manifest and "jdw/kernels/cpu_batch_norm.cc" in manifest
    assert "jdw/kernels/cpu_python.h" in manifest and "jdw/kernels/cpu_depthwise.h" in manifest
    isas = ("avx512_bf16", "avx512", "avx2", "baseline")
    assert all(f"jdw/kernels/cpu_depthwise_{isa}.cc" in manifest and f'"{isa}"' in setup for isa in isas)
    # Every source is in the sdist and every header or loop file a source includes by a quoted name (the XLA FFI
    # headers come from jaxlib). The floors' run (.ci/check_package) copies the checkout without jdw/: the sources
    # are read where they are here.
    kernels = ROOT / "jdw" / "kernels"
    sources = sorted([*kernels.glob("cpu_*.cc"), *kernels.glob("cpu_*.h"), *kernels.glob("cpu_*.inc")])
    local = {name for source in sources for name in re.findall(r'#include "([^"/]+)"', source.read_text())}
    shared = {"cpu_parallel.h", "cpu_python.h", "cpu_target.h", "cpu_depthwise.h", "cpu_depthwise_loops.inc"}
    assert not sources or shared <= local
    assert all(f"jdw/kernels/{name}" in manifest for name in local), local
    assert all(f"jdw/kernels/{source.name}" in manifest for source in sources), sources
    assert "jdw.kernels._cpu_{name}" in (ROOT / "setup.py").read_text()
