"""Atomic writes: the old file or the whole new one, and the mode a plain ``open`` gives.

``mkstemp`` makes its files ``0o600``; renamed into place they locked a cluster group out of every
run directory and shard set that fastprompt wrote.
"""
import os
import stat

import pytest

from fastprompt.atomic_io import atomic_write, atomic_write_text


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_a_written_file_has_the_mode_open_would_give(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(str(tmp_path / "a.json"), "{}")
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "state.pt"
    target.write_text("old")

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(target), fail)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["state.pt"]
