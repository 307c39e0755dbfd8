"""The documentation site: every public name documented and referenced, the picture script runs.

``mkdocs build --strict`` itself runs in CI (``.ci/run``) with the ``docs`` extra.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# Modules whose ``__all__`` is the public API, and the names each must document.
PUBLIC = [
    "jdw",
    "jdw.functional",
    "jdw.nnx",
    "jdw.linen",
    "jdw.models",
    "jdw.cost",
    "jdw.backends",
    "jdw.geometry",
    "jdw.initializers",
    "jdw.kernels.pallas_depthwise",
    "jdw.traffic",
]
# Names that are sub-packages or constants rather than documented callables.
NOT_CALLABLE = {
    "backends",
    "cost",
    "initializers",
    "linen",
    "models",
    "nnx",
    "pallas",
    "EPILOGUES",
    "geometry",
    "TARGETS",
    "TPU_CHIPS",
}


def _public_names():
    for module_name in PUBLIC:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            yield module_name, name, getattr(module, name)


def _api_text() -> str:
    return "\n".join(p.read_text() for p in sorted((DOCS / "api").glob("*.md")))


PUBLIC_NAMES = list(_public_names())


@pytest.mark.parametrize("module_name, name, obj", PUBLIC_NAMES, ids=[f"{m}.{n}" for m, n, _ in PUBLIC_NAMES])
def test_public_name_has_a_docstring(module_name, name, obj):
    assert inspect.getdoc(obj), f"{module_name}.{name} has no docstring"


def test_every_public_name_is_in_the_api_reference():
    text = _api_text()
    referenced = set(re.findall(r"^::: ([\w.]+)", text, flags=re.M))
    members = set(re.findall(r"^\s+- (\w+)$", text, flags=re.M))
    missing = []
    for module_name, name, obj in _public_names():
        if name in NOT_CALLABLE:
            continue
        qualified = {f"{module_name}.{name}", f"{getattr(obj, '__module__', '')}.{name}"}
        if module_name == "jdw.functional" or module_name == "jdw":
            qualified |= {f"jdw.{name}", f"jdw.functional.{name}"}
        if not (qualified & referenced or name in members):
            missing.append(f"{module_name}.{name}")
    assert not missing, f"public names missing from docs/api: {missing}"


def test_every_page_in_the_nav_exists_and_every_page_is_in_the_nav():
    config = (ROOT / "mkdocs.yml").read_text()
    nav = set(re.findall(r":\s+([\w/]+\.md)\s*$", config, flags=re.M))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert nav == pages, (sorted(nav - pages), sorted(pages - nav))


def test_pictures_referenced_by_the_docs_are_in_the_repository():
    for page in DOCS.rglob("*.md"):
        for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            assert (page.parent / image).resolve().is_file(), f"{page.name} shows {image}, which is missing"


def test_the_picture_script_draws_every_picture(tmp_path):
    from jdw import bench

    records = bench.run([bench.LayerShape(8, 8, 1), bench.LayerShape(9, 8, 2)], ["xla", "taps"], batch=1, repeats=1)
    saved = tmp_path / "bench.json"
    saved.write_text(json.dumps(records))
    out = tmp_path / "images"
    command = [sys.executable, str(DOCS / "make_pictures.py"), "--out", str(out), "--bench-json", str(saved)]
    subprocess.run(command, check=True, timeout=600, capture_output=True)
    drawn = sorted(p.name for p in out.iterdir())
    assert drawn == sorted(p.name for p in (DOCS / "images").iterdir())
    assert all((out / name).stat().st_size > 10_000 for name in drawn)


PAGES_WITH_CODE = [page for page in sorted(DOCS.rglob("*.md")) if "```python" in page.read_text()]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: str(p.relative_to(DOCS)))
def test_docs_python_blocks_run(page, tmp_path, monkeypatch):
    """Every page's Python blocks run as written, in order (Keras and torchvision weights random: offline)."""
    import jax

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    namespace: dict = {}
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        for index, block in enumerate(blocks):
            code = block.replace('weights="imagenet"', "weights=None").replace('weights="DEFAULT"', "weights=None")
            if "import torch" in code or "torchvision" in code:  # the torch extra (not in the floors' test-core)
                pytest.importorskip("torchvision")
            exec(compile(code, f"{page.name} python block {index}", "exec"), namespace)
