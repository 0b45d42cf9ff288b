"""What a user sees while the C++ kernels build on first use: a line before and a line after."""
import logging
import os
import types

import pytest

from fastprompt.ops import jit


def test_a_build_announces_itself_and_says_when_it_is_done(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("FASTPROMPT_JIT_DIR", str(tmp_path))
    monkeypatch.delenv("FASTPROMPT_DISABLE_JIT", raising=False)
    monkeypatch.setattr(jit, "toolchain_problem", lambda kind: None)
    monkeypatch.setattr(jit, "_load_cached", lambda kind: None)
    built = types.SimpleNamespace(name="fake extension")
    compiler = types.SimpleNamespace(load=lambda **kwargs: built)  # stands in for cpp_extension.load
    monkeypatch.setattr(jit, "_cpp_extension", lambda: compiler)
    with caplog.at_level(logging.WARNING, logger="fastprompt.ops.jit"):
        assert jit._build("cpu") is built
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "fastprompt.ops.jit"]
    assert len(lines) == 2, lines
    # WARNING: Python's last-resort handler prints it to stderr in a plain script, as the module says.
    assert all(level == logging.WARNING for level, _ in lines)
    assert "building the cpu prompt_attention extension" in lines[0][1]
    assert "built the cpu prompt_attention extension in 0 s; later runs load it from" in lines[1][1]
    assert str(tmp_path) in lines[1][1]
    assert "WARNING lines" in jit.__doc__ and "INFO log line" not in jit.__doc__


def test_the_ninja_wheel_is_found_without_an_activated_virtualenv(monkeypatch):
    """``python`` run from a virtualenv's bin/ without activating it: the wheel's ninja is not on
    PATH, yet the build must find it (torch's builder looks on PATH only)."""
    ninja = pytest.importorskip("ninja")
    monkeypatch.setenv("PATH", "/nonexistent-bin")
    assert jit._ninja_on_path()
    assert os.environ["PATH"].split(os.pathsep)[0] == ninja.BIN_DIR
