"""``fastprompt --help`` answers without importing torch: the package and its subpackages import
their names on first use (:mod:`fastprompt.lazy`) and the command line builds its parsers from
light modules only, importing the heavy code inside the commands.

What is checked is the behaviour (which modules a fresh interpreter has imported), never the time.
"""
import json
import os
import subprocess
import sys

import pytest

import fastprompt

HEAVY = ("torch", "open_clip", "numpy", "triton", "PIL")
COMMANDS = ["demo", "data", "data check", "data fewshot", "data pack", "train", "eval", "run", "results", "pretrain",
            "env"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastprompt.__file__)))

# In a fresh interpreter: run cli.main(argv), then report its exit status and the heavy modules imported.
PROBE = """
import json, sys
from fastprompt.cli import main
try:
    code = main(json.loads(sys.argv[1]))
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "heavy": [m for m in json.loads(sys.argv[2]) if m in sys.modules]}))
"""


def _python(*args):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


def _probe(argv):
    proc = _python("-c", PROBE, json.dumps(argv), json.dumps(HEAVY))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc


@pytest.mark.parametrize("command", [""] + COMMANDS)
def test_help_imports_no_torch(command):
    argv = command.split() + ["--help"]
    result, proc = _probe(argv)
    assert result == {"code": 0, "heavy": []}, f"fastprompt {' '.join(argv)}: {result}"
    assert f"usage: fastprompt {command}".rstrip() in proc.stdout


@pytest.mark.parametrize("argv, code, message", [
    (["--version"], 0, f"fastprompt {fastprompt.__version__}"),
    (["train", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["trian"], 2, "invalid choice: 'trian'"),
    (["train", "--precision", "fp8"], 2, "invalid choice: 'fp8'"),
    (["pretrain", "--output-dir", "x", "--universe", "winter22"], 2, "invalid choice: 'winter22'"),
    (["data", "pack", "src", "out", "--names", "last"], 2, "invalid choice: 'last'"),
    (["run", "--protocol", "zeroshot"], 2, "invalid choice: 'zeroshot'"),
])
def test_version_and_usage_errors_import_no_torch(argv, code, message):
    result, proc = _probe(argv)
    assert result == {"code": code, "heavy": []}, f"fastprompt {' '.join(argv)}: {result}"
    assert message in proc.stdout + proc.stderr


def test_import_fastprompt_imports_no_torch():
    proc = _python("-c", f"import sys, fastprompt; print([m for m in {HEAVY!r} if m in sys.modules])")
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_module_entry_point_lists_every_command():
    proc = _python("-m", "fastprompt.cli", "--help")
    assert proc.returncode == 0, proc.stderr
    for command in {c.split()[0] for c in COMMANDS}:
        assert f"    {command} " in proc.stdout, f"{command} missing from fastprompt --help:\n{proc.stdout}"


def test_list_recipes_still_lists_them():
    proc = _python("-m", "fastprompt.cli", "train", "--list-recipes")
    assert proc.returncode == 0, proc.stderr
    assert "coop/vit_b16_ep50" in proc.stdout.split()


@pytest.mark.parametrize("package", ["fastprompt", "fastprompt.data", "fastprompt.train", "fastprompt.pretrain",
                                     "fastprompt.protocols"])
def test_every_public_name_is_reachable(package):
    module = __import__(package, fromlist=["_"])
    missing = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert not missing, f"{package} lists names it cannot give: {missing}"
    assert set(module.__all__) <= set(dir(module))
    namespace = {}
    exec(f"from {package} import *", namespace)
    assert set(module.__all__) <= set(namespace)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        getattr(module, "NoSuchName")


def test_top_level_names_are_the_defining_modules_objects():
    from fastprompt.learners import CoOpLearner, RPPLearner
    from fastprompt.learners.zero_shot import zero_shot_classifier

    assert fastprompt.CoOpLearner is CoOpLearner
    from fastprompt import RPPLearner as lazy_rpp
    assert lazy_rpp is RPPLearner
    assert fastprompt.zero_shot_classifier is zero_shot_classifier
    assert fastprompt.ops.prompt_attention is sys.modules["fastprompt.ops"].prompt_attention
    assert fastprompt.models is sys.modules["fastprompt.models"]  # a submodule, as the eager package left it
