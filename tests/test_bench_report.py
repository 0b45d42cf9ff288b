"""The benchmarks' reporting: a missed target is a non-zero exit status (``--no-fail`` only
reports it), and every CSV row says which commit, versions and device it measured."""
import csv
import os
import subprocess
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.harness import report  # noqa: E402


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_missed_target_exits_non_zero_unless_no_fail(tmp_path, capsys):
    path = str(tmp_path / "results.csv")
    rows = [{**report.common_fields(torch.device("cpu")), "case": "a", "speedup": 1.5, "target": 2.0}]
    assert report.report_rows(path, rows, ["a speed-up 1.5x < 2.0x"]) == 1
    assert "exit status 1" in capsys.readouterr().out
    assert report.report_rows(path, rows, ["a speed-up 1.5x < 2.0x"], no_fail=True) == 0
    assert report.report_rows(path, rows, []) == 0
    assert len(_rows(path)) == 3  # the rows are written either way


def test_rows_record_commit_versions_and_device(tmp_path):
    fields = report.common_fields(torch.device("cpu"))
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if head:
        assert fields["commit"] in (head, head + "-dirty")
    for key in ("timestamp", "device", "python", "torch", "open_clip", "fastprompt"):
        assert fields[key], key
    assert fields["torch"] == torch.__version__


def test_new_columns_extend_an_old_file(tmp_path):
    path = str(tmp_path / "old.csv")
    report.append_csv(path, [{"timestamp": "t0", "case": "old", "speedup": 2.0}])
    report.append_csv(path, [{"timestamp": "t1", "commit": "abc", "case": "new", "speedup": 3.0}])
    rows = _rows(path)
    with open(path) as f:
        assert f.readline().strip() == "timestamp,case,speedup,commit"  # old columns kept, in their order
    assert rows[0]["commit"] == "" and rows[1]["commit"] == "abc" and rows[1]["case"] == "new"


def test_benchmarks_with_targets_take_no_fail():
    for script in ("bench/steps/bench_step.py", "bench/attention/bench_cpu_backend.py"):
        done = subprocess.run([sys.executable, os.path.join(REPO, script), "--help"], capture_output=True,
                              text=True, timeout=300, cwd=REPO)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "--no-fail" in done.stdout, script
