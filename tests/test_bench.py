"""The benchmark runs and reports every part (a smoke test, not a timed test)."""

import json
import os
import subprocess
import sys

import pytest

from jdw import bench


def test_bench_json(capsys):
    assert bench.main(["--batch", "2", "--layers", "8x8x16/s1,9x9x8/s2", "--repeats", "1", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    # Every registered backend but the interpreted kernel (the suite registers the backend guide's example too).
    assert {r["implementation"] for r in records} == set(bench.default_implementations("cpu")) >= {"xla", "taps"}
    for r in records:
        for part in bench.PARTS:
            assert r[f"{part}_ms"] > 0
            assert r[f"{part}_speedup_vs_xla"] > 0
        assert r["forward_gbps"] > 0
        assert r["forward_backward_compile_s"] > 0 and r["compile_vs_xla"] > 0


def test_bench_table(capsys):
    bench.main(["--batch", "1", "--layers", "7x7x960/s1", "--repeats", "1", "--parts", "forward"])
    out = capsys.readouterr().out
    assert "| 7x7x960/s1" in out and "all 3 layers" in out
    assert "compile" not in out  # only when forward + backward is timed


def test_bench_table_reports_compile_time(capsys):
    bench.main(["--batch", "1", "--layers", "8x8x16/s1", "--repeats", "1", "--implementations", "xla,taps"])
    out = capsys.readouterr().out
    assert "fwd+bwd compile s" in out
    xla = next(line for line in out.splitlines() if line.startswith("| 8x8x16/s1") and "| xla" in line)
    assert xla.rstrip(" |").endswith("1.00x")  # the reference's compile time over its own


def test_bench_times_the_pallas_kernel_when_asked(capsys):
    """On CPU the kernel is interpreted, so it is timed only on request; the record then carries every part."""
    assert "pallas" not in bench.default_implementations("cpu")
    assert "pallas" in bench.default_implementations("tpu") and "pallas" in bench.default_implementations("gpu")
    args = ["--batch", "1", "--layers", "9x9x8/s2", "--repeats", "1", "--implementations", "xla,pallas"]
    assert bench.main([*args, "--json", "--peak-gbps", "100"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["implementation"] for r in records] == ["xla", "pallas"]
    for r in records:
        assert all(r[f"{part}_ms"] > 0 for part in bench.PARTS)
        assert r["forward_bandwidth_fraction"] == r["forward_gbps"] / 100


def test_sequence_suite_times_causal_conv1d_and_a_decoding_step(capsys):
    argv = ["--suite", "sequence", "--layers", "1x64x8/k4", "--implementations", "xla,taps", "--repeats", "1"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "# jdw.bench --suite sequence: float32" in out
    rows = [line for line in out.splitlines() if line.startswith("| 1x64x8/k4 (1x64x8, k4)")]
    cells = [[c.strip() for c in row.split("|")[2:4]] for row in rows]
    assert cells == [["xla", "sequence"], ["xla", "packed"], ["taps", "sequence"], ["taps", "packed"]]
    assert "| 1.00x" in rows[0] and "| 1.00x" in rows[1]  # xla against itself, each call
    decode = [[c.strip() for c in line.split("|")[3:5]] for line in out.splitlines() if "24 layers x 8 x 3 x 8" in line]
    assert decode == [[name, state] for name in ("xla", "taps") for state in ("in order", "ring buffer")]


def test_sequence_shapes_are_parsed_or_named():
    assert bench._parse_sequence("mamba-130m") == bench.SEQUENCES[0]
    assert bench._parse_sequence("2x16x4/k3") == bench.SequenceShape("2x16x4/k3", 2, 16, 4, 3)
    with pytest.raises(SystemExit, match=r"bad sequence shape '2x16/k3': expected BATCHxLENGTHxCHANNELS/kKERNEL"):
        bench._parse_sequence("2x16/k3")


@pytest.mark.parametrize(
    "suite,model",
    [("mobilenet", "MobileNetV2"), ("efficientnet", "EfficientNetB0"), ("convnext", "ConvNeXtTiny")],
)
def test_layer_suites_are_the_models_depthwise_layers(suite, model):
    """Each suite lists its model's depthwise layers at 224x224: input size, channels, stride and kernel, counted.

    The model is traced on the ``"xla"`` reference, where each depthwise layer is one grouped convolution.
    """
    import collections

    import jax
    import jax.numpy as jnp
    from flax import nnx

    import jdw

    model = nnx.eval_shape(lambda: getattr(jdw.models, model)(rngs=nnx.Rngs(0)))
    model.eval()
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    with jdw.backends.registry.forced_implementation("xla"):
        jaxpr = jax.make_jaxpr(lambda state, x: nnx.merge(graphdef, state)(x))(state, x)
    seen = collections.Counter()
    for eqn in jaxpr.jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated" and eqn.params["feature_group_count"] > 1:
            lhs, rhs = (v.aval.shape for v in eqn.invars)
            seen[(lhs[1], lhs[3], eqn.params["window_strides"][0], rhs[0])] += 1
    expected = collections.Counter()
    for layer in bench.SUITES[suite]:
        expected[(layer.size, layer.channels, layer.stride, layer.kernel)] += layer.count
    assert seen == expected


def test_layer_names_carry_the_kernel_when_not_3x3():
    assert bench._parse_layer("28x28x240/s1/k5") == bench.LayerShape(28, 240, 1, kernel=5)
    assert bench.LayerShape(7, 768, 1, kernel=7, count=3).name == "7x7x768/s1/k7"
    assert bench._parse_layer("7x7x960/s1") == bench.MOBILENET_V2[-1]
    with pytest.raises(SystemExit, match=r"expected SIZExSIZExCHANNELS/sSTRIDE\[/kKERNEL\]"):
        bench._parse_layer("7x7x960/k5")


def test_compare_torch_checks_numbers_and_reports_ratios(capsys):
    """PyTorch's results are checked against jdw's before timing; each part gets both medians and a ratio."""
    pytest.importorskip("torch")
    layers = "8x8x16/s1,9x9x8/s2/k5"
    assert bench.main(["--compare", "torch", "--batch", "2", "--layers", layers, "--repeats", "2", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["layer"] for r in records] == ["8x8x16/s1", "9x9x8/s2/k5"]
    from jdw.kernels import cpu_depthwise

    for r in records:
        assert r["implementation"] == "automatic"
        assert r["instruction_set"] == cpu_depthwise.instruction_set() and r["malloc"] in ("system", "tcmalloc")
        for part in bench.PARTS:
            assert r[f"{part}_ms"] > 0 and r[f"{part}_torch_ms"] > 0
            assert r[f"{part}_ratio"] == pytest.approx(r[f"{part}_ms"] / r[f"{part}_torch_ms"])
    args = ["--compare", "torch", "--batch", "1", "--layers", "7x7x32/s1", "--repeats", "1"]
    assert bench.main([*args, "--implementations", "taps", "--parts", "forward", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "jdw 'taps' against torch" in out and "| 7x7x32/s1" in out and "network (1 layers)" in out
    assert " malloc" in out.splitlines()[0]
    # The header names the dispatch the records ran with (inline only where main started JAX's backend).
    assert f"JAX dispatch {records[0]['jax_dispatch']}" in out.splitlines()[0]


def test_compare_torch_command_runs_jax_inline():
    """``python -m jdw.bench --compare torch`` runs JAX's computations on the calling thread, as PyTorch's."""
    pytest.importorskip("torch")
    args = [sys.executable, "-m", "jdw.bench", "--compare", "torch", "--batch", "1", "--layers", "7x7x16/s1"]
    args += ["--repeats", "1", "--parts", "forward"]
    env = {**os.environ, "JDW_TCMALLOC": "0"}
    inline = subprocess.run(args, capture_output=True, text=True, check=True, env=env).stdout
    assert "JAX dispatch inline" in inline.splitlines()[0], inline
    kept = subprocess.run([*args, "--jax-async-dispatch"], capture_output=True, text=True, check=True, env=env).stdout
    assert "JAX dispatch async" in kept.splitlines()[0], kept


def test_compare_torch_refuses_different_numbers(monkeypatch):
    """A comparison whose two sides compute different things is an error, not a ratio."""
    pytest.importorskip("torch")
    real = bench._torch_programs

    def shifted(layer, dtype):
        programs = real(layer, dtype)
        return {**programs, "forward": lambda x, w: (programs["forward"](x, w)[0] + 1.0,)}

    monkeypatch.setattr(bench, "_torch_programs", shifted)
    with pytest.raises(AssertionError, match=r"8x8x16/s1 forward: jdw and PyTorch differ by"):
        bench.compare_torch([bench.LayerShape(8, 16, 1)], batch=1, repeats=1, parts=["forward"])


def test_compare_torch_sequences_checks_numbers_and_reports_ratios(capsys):
    """--suite sequence --compare torch: causal_conv1d (SiLU) against PyTorch's conv1d, forward and training."""
    pytest.importorskip("torch")
    args = ["--suite", "sequence", "--compare", "torch", "--layers", "2x40x24/k4,1x33x16/k3", "--repeats", "1"]
    assert bench.main([*args, "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["batch"], r["length"], r["channels"], r["kernel"]) for r in records] == [(2, 40, 24, 4), (1, 33, 16, 3)]
    for r in records:
        for part in ("forward", "forward_backward"):
            assert r[f"{part}_ms"] > 0 and r[f"{part}_torch_ms"] > 0
            assert r[f"{part}_ratio"] == pytest.approx(r[f"{part}_ms"] / r[f"{part}_torch_ms"])
    assert bench.main([*args, "--parts", "forward", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "causal_conv1d (SiLU) against torch" in out and "all shapes (2 layers)" in out
    with pytest.raises(SystemExit):
        bench.main([*args, "--parts", "kernel_grad"])


def test_compare_torch_sequences_refuses_different_numbers(monkeypatch):
    """A sequence comparison whose sides differ (here PyTorch's bias gradient) is an error, not a ratio."""
    pytest.importorskip("torch")
    real = bench._torch_sequence_programs

    def shifted(shape, dtype):
        programs = real(shape, dtype)
        return {**programs, "forward_backward": lambda *a: (*programs["forward_backward"](*a)[:3], a[2] * 0 + 5.0)}

    monkeypatch.setattr(bench, "_torch_sequence_programs", shifted)
    with pytest.raises(AssertionError, match=r"tiny forward_backward: jdw and PyTorch differ by"):
        bench.compare_torch_sequences([bench.SequenceShape("tiny", 1, 32, 8, 4)], repeats=1)
