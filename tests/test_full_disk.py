"""A full disk during a checkpoint: one line naming the file and the reason, the previous checkpoint
intact, no temporary file left, and ``--resume`` going on once there is room again.

The fault is real where it can be: ``RLIMIT_FSIZE`` (with ``SIGXFSZ`` ignored) makes the kernel refuse
writes past N bytes with ``EFBIG``, exactly as a full disk refuses them with ``ENOSPC``, in a child
process. torch's own writer reported it as a C++ ``enforce fail at inline_container.cc`` traceback.
"""
import errno
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from fastprompt import cli
from fastprompt.atomic_io import StorageFullError, atomic_write
from fastprompt.errors import EXPECTED_ERRORS, TrainError
from fastprompt.train.state import STATE_FILE, load_state

# state.pt of the run below is about 33 kB, prompt.safetensors about 8 kB, every other file under
# 5 kB: a 16 kB limit refuses only the resumable state
LIMIT = 16 * 1024
TRAIN = ["train", "--recipe", "coop/vit_b16_ep50", "--dataset", "dtd", "--model", "tiny", "--pretrained", "none",
         "--no-progress", "--workers", "0", "OPTIM.MAX_EPOCH", "3", "TRAIN.TENSORBOARD", "False"]
# (no loader workers: their batches travel through shared-memory files, which the limit caps too)


def _refuse(code):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write("half a file")
        raise OSError(code, os.strerror(code))

    return write


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_a_refused_write_leaves_the_old_file_and_says_so_in_one_line(tmp_path, code):
    target = tmp_path / "state.pt"
    target.write_text("old")
    with pytest.raises(StorageFullError) as caught:
        atomic_write(str(target), _refuse(code))
    err = caught.value
    assert err.errno == code and err.filename == str(target) and isinstance(err, OSError)
    assert str(err) == f"cannot write {target}: {os.strerror(code)} ({errno.errorcode[code]}); it is left as it " \
                       "was before"
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["state.pt"]
    assert isinstance(err, EXPECTED_ERRORS), "a command reports it as one line"


def test_a_refused_first_write_says_no_file_was_created(tmp_path):
    with pytest.raises(StorageFullError, match=r"No space left on device \(ENOSPC\); no file was created"):
        atomic_write(str(tmp_path / "new.pt"), _refuse(errno.ENOSPC))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("message, code", [
    ("Error while serializing: I/O error: File too large (os error 27)", errno.EFBIG),  # safetensors
    ("PytorchStreamWriter failed writing file data/0: file write failed", None),  # torch: no errno kept
])
def test_a_library_that_reports_a_refused_write_in_words_is_understood(tmp_path, message, code):
    def write(tmp):
        raise RuntimeError(message)

    with pytest.raises(StorageFullError) as caught:
        atomic_write(str(tmp_path / "x"), write)
    assert caught.value.errno == code and os.listdir(tmp_path) == []
    assert len(str(caught.value).splitlines()) == 1


def test_other_failures_are_left_as_they_are(tmp_path):
    for exc in (OSError(errno.EACCES, "Permission denied"), RuntimeError("(os error 13)"), ValueError("bug")):
        def write(tmp, exc=exc):
            raise exc

        with pytest.raises(type(exc)) as caught:
            atomic_write(str(tmp_path / "x"), write)
        assert not isinstance(caught.value, StorageFullError) and os.listdir(tmp_path) == []


def _limited(limit):
    """preexec_fn: the child may write files of at most ``limit`` bytes; past it, EFBIG."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return apply


def _python(code, *args, limit=None):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          preexec_fn=_limited(limit) if limit else None, timeout=300,
                          env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})


def test_the_checkpoint_writers_under_a_real_file_size_limit(tmp_path):
    """save_state and save_pretrained over an existing checkpoint, in a child whose files may not
    grow past 16 kB: the errno is the kernel's, the old files are untouched."""
    from fastprompt.testing import tiny_clip
    from fastprompt.learners import CoOpLearner

    learner = CoOpLearner.from_model(tiny_clip(0), ["cat", "dog"], n_ctx=2)
    learner.save_pretrained(str(tmp_path))
    (tmp_path / STATE_FILE).write_bytes(b"old state")
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    result = _python("""
        import json, sys, torch
        from fastprompt.atomic_io import StorageFullError
        from fastprompt.learners import CoOpLearner
        from fastprompt.testing import tiny_clip
        from fastprompt.train.state import save_state
        out = {}
        try:
            save_state(sys.argv[1] + "/state.pt", {"format": 1, "params": {"ctx": torch.zeros(10000)}})
        except StorageFullError as exc:
            out["state"] = [exc.errno, str(exc)]
        # class-specific contexts: 8 classes x 16 x 64 floats, 32 kB
        learner = CoOpLearner.from_model(tiny_clip(0), [f"class {i}" for i in range(8)], n_ctx=16, csc=True)
        try:
            learner.save_pretrained(sys.argv[1])
        except StorageFullError as exc:
            out["prompts"] = [exc.errno, str(exc)]
        print(json.dumps(out))
    """, str(tmp_path), limit=LIMIT)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["state"] == [errno.EFBIG, f"cannot write {tmp_path}/state.pt: File too large (EFBIG); it is left as "
                                         "it was before"]
    assert out["prompts"][0] == errno.EFBIG and f"{tmp_path}/prompt.safetensors" in out["prompts"][1]
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


_LIMIT_AFTER_FIRST_CHECKPOINT = """
    import resource, signal, sys
    from fastprompt import cli
    from fastprompt.train import trainer

    save = trainer.Trainer.save

    def save_then_limit(self):
        save(self)  # the first checkpoint fits; from now on no file may grow past the limit
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    trainer.Trainer.save = save_then_limit
    sys.exit(cli.main(sys.argv[2:]))
"""


def _check_one_line_failure(result, run, *needles):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert lines[-1].startswith("fastprompt train: error: checkpoint of step "), result.stderr
    assert all(n in lines[-1] for n in needles), lines[-1]
    assert lines[-1].split(": error: ", 1)[1] in (run / "log.txt").read_text(), "the run's log has the error"
    assert not [name for name in os.listdir(run) if name.startswith(".tmp-")], os.listdir(run)


def test_a_full_disk_at_a_later_checkpoint_keeps_the_previous_one_and_resume_goes_on(dtd_tree, tmp_path, capsys):
    run = tmp_path / "run"
    result = _python(_LIMIT_AFTER_FIRST_CHECKPOINT, str(LIMIT), *TRAIN, "--data", dtd_tree, "--output-dir", str(run))
    _check_one_line_failure(result, run, f"cannot write {run}/{STATE_FILE}: File too large (EFBIG)",
                            "The previous checkpoint (step 1)", "free space", "--resume")
    state = load_state(str(run / STATE_FILE))  # the checkpoint of epoch 1, whole
    assert (state["epoch"], state["step"]) == (1, 1)
    # room again: the same command with --resume goes on from it and finishes
    assert cli.main(TRAIN + ["--data", dtd_tree, "--output-dir", str(run), "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().err
    assert load_state(str(run / STATE_FILE))["finished"]


def test_a_first_checkpoint_larger_than_the_disk_allows_is_one_line(dtd_tree, tmp_path):
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "fastprompt.cli", *TRAIN, "--data", dtd_tree, "--output-dir",
                             str(run)], capture_output=True, text=True, preexec_fn=_limited(LIMIT), timeout=300,
                            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    _check_one_line_failure(result, run, "File too large (EFBIG)", "No checkpoint was written yet")
    assert not (run / STATE_FILE).exists()


def test_a_full_disk_at_the_prompt_files_says_the_state_was_written(tmp_path):
    """state.pt is written first: when the prompt files beside it are refused, the message says
    which checkpoint each file holds (the run resumes from the state and writes them again)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from train_helpers import tensor_trainer, tensors, tiny_learner

    learner = tiny_learner()
    trainer = tensor_trainer(learner, *tensors(8), run_dir=str(tmp_path))
    trainer.save()

    def refused(directory):
        raise StorageFullError(os.path.join(directory, "prompt.safetensors"), errno.ENOSPC, "")

    learner.save_pretrained = refused
    trainer.step = 7
    with pytest.raises(TrainError, match=r"checkpoint of step 7 not saved: cannot write .*prompt.safetensors: No "
                                         r"space left on device \(ENOSPC\).* The resumable state.pt of step 7 was "
                                         r"written, the prompt files beside it may still be the previous "
                                         r"checkpoint's; free space"):
        trainer.save()
    assert load_state(str(tmp_path / STATE_FILE))["step"] == 7
    assert torch.load(tmp_path / STATE_FILE, weights_only=True)["format"] == 1


def test_a_full_disk_while_appending_to_the_run_log_is_one_line(tmp_path):
    """log.txt and metrics.jsonl are appended, not replaced: a refused append is a StorageFullError
    naming the file (the CLI's one line), saying the last line may be cut, never a bare OSError."""
    out = _python("""
        import sys
        from fastprompt.train.records import RunRecords
        from fastprompt.errors import EXPECTED_ERRORS
        records = RunRecords(sys.argv[1], tensorboard=False, echo=False)
        try:
            for i in range(10_000):
                records.metric({"kind": "step", "step": i, "loss": 0.5})
        except EXPECTED_ERRORS as exc:
            print(type(exc).__name__, "|", exc)
        """, str(tmp_path), limit=LIMIT)
    assert out.returncode == 0, out.stderr
    name, message = out.stdout.strip().split(" | ")
    assert name == "StorageFullError"
    assert str(tmp_path / "metrics.jsonl") in message and "EFBIG" in message and "--resume" in message
    assert "left as it was" not in message
