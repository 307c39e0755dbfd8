"""The training command's restart under tcmalloc (jdw.training.allocator)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jdw.training import allocator


class Restarted(Exception):
    """Raised by the stand-in for os.execve: what the restart would have run."""


@pytest.fixture
def execve(monkeypatch):
    calls = []

    def fake(path, argv, env):
        calls.append((path, argv, env))
        raise Restarted

    monkeypatch.setattr(os, "execve", fake)
    for name in (allocator.ENV, allocator._STARTED, "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(allocator, "tcmalloc_loaded", lambda: False)
    # A test that ran a notebook in this worker (nbclient's kernel lookup imports ipykernel) must not
    # make this process look like a Jupyter kernel.
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    return calls


def test_restarts_the_same_command_with_tcmalloc_preloaded(execve, monkeypatch):
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "libtcmalloc_minimal.so.4")
    monkeypatch.setenv("LD_PRELOAD", "libother.so")
    argv = ["python", "-m", "jdw.training", "--epochs", "3"]
    with pytest.raises(Restarted):
        allocator.restart_under_tcmalloc(argv)
    ((path, run, env),) = execve
    assert path == sys.executable and run == argv
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4 libother.so"  # the user's preloads are kept, after it
    assert env[allocator._STARTED] == "libtcmalloc_minimal.so.4"  # so the new process never restarts again


@pytest.mark.parametrize(
    "situation",
    ["refused", "already restarted", "already loaded", "not installed"],
)
def test_does_nothing_when_it_cannot_or_should_not(execve, monkeypatch, situation):
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "libtcmalloc_minimal.so.4")
    if situation == "refused":
        monkeypatch.setenv(allocator.ENV, "0")
    elif situation == "already restarted":
        monkeypatch.setenv(allocator._STARTED, "libtcmalloc_minimal.so.4")
    elif situation == "already loaded":
        monkeypatch.setattr(allocator, "tcmalloc_loaded", lambda: True)
    else:
        monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    allocator.restart_under_tcmalloc(["python", "train.py"])  # returns
    assert execve == []


@pytest.mark.parametrize("where", ["notebook", "stdin"])
def test_never_restarts_a_notebook_kernel_or_a_program_from_stdin(execve, monkeypatch, where):
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "libtcmalloc_minimal.so.4")
    if where == "notebook":
        monkeypatch.setitem(sys.modules, "ipykernel", sys)  # as in Jupyter's kernel, where %run would be replaced
    else:
        monkeypatch.setattr(sys, "argv", ["-"])
    allocator.restart_under_tcmalloc()
    assert execve == []


def test_a_script_that_imported_ipython_still_restarts(execve, monkeypatch):
    IPython = pytest.importorskip("IPython")  # flax imports it in every process; only a running shell stops a restart

    monkeypatch.setitem(sys.modules, "IPython", IPython)
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "libtcmalloc_minimal.so.4")
    monkeypatch.setattr(sys, "argv", ["train_mobilenet.py"])
    with pytest.raises(Restarted):
        allocator.restart_under_tcmalloc()


def test_advice_only_where_it_helps(monkeypatch):
    monkeypatch.delenv(allocator.ENV, raising=False)
    monkeypatch.setattr(allocator, "tcmalloc_loaded", lambda: False)
    if sys.platform.startswith("linux"):
        assert "libtcmalloc-minimal4" in allocator.advice()
    monkeypatch.setenv(allocator.ENV, "0")
    assert allocator.advice() is None
    monkeypatch.delenv(allocator.ENV)
    monkeypatch.setattr(allocator, "tcmalloc_loaded", lambda: True)
    assert allocator.advice() is None


@pytest.mark.skipif(allocator.find_tcmalloc() is None, reason="no tcmalloc on this machine")
def test_a_real_restart_runs_under_tcmalloc():
    script = (
        "from jdw.training import allocator; allocator.restart_under_tcmalloc(); print(allocator.tcmalloc_loaded())"
    )
    env = {k: v for k, v in os.environ.items() if k not in (allocator.ENV, allocator._STARTED)}
    ran = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.split() == ["True"]
    refused = subprocess.run(
        [sys.executable, "-c", script], env={**env, allocator.ENV: "0"}, capture_output=True, text=True, timeout=120
    )
    assert refused.stdout.split() == ["False"]
