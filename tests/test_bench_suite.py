"""The benchmark suite's logic that is not timing: matching rows of two runs and their change, the
growth fit and its projections, the scaling budget decisions, the CSV and Markdown writers, the
plots. Synthetic rows only: nothing here measures anything."""
import configparser
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.harness import report  # noqa: E402
from bench.suite import compare, growth, scaling, table  # noqa: E402
from bench.suite import rows as rows_mod  # noqa: E402

COMMON = {"timestamp": "2026-12-01T00:00:00+00:00", "device": "Test CPU (2 threads)", "python": "3.11", "torch": "2.x",
          "open_clip": "3.3", "fastprompt": "0.1", "commit": "0123456789abcdef-dirty", "model": "ViT-B-16"}


def step(kind, case, side, seconds, speedup, peak=None, run="r1", **extra):
    row = dict(COMMON, run_id=run, kind=kind, case=case, description=f"{case} step", side=side, images=4,
               classes=100, n_ctx=16, median_s=seconds, speedup=speedup, **extra)
    if peak is not None:
        row["peak_mb"] = peak
    return row


def test_the_test_command_does_not_collect_bench():
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, "pytest.ini"))
    assert config["pytest"]["testpaths"].split() == ["tests"]


# ---- rows and --compare -------------------------------------------------------------------------

def test_keys_match_whether_values_come_from_python_or_a_csv():
    from_python = step("train", "coop", "fastprompt", 1.0, 7.0)
    from_csv = {k: str(v) for k, v in from_python.items()}
    from_csv["images"] = "4.0"
    assert rows_mod.row_key(from_python) == rows_mod.row_key(from_csv)
    assert rows_mod.row_key(from_python) != rows_mod.row_key(dict(from_python, classes=200))
    assert rows_mod.row_key(from_python) != rows_mod.row_key(dict(from_python, side="reference"))


def test_compare_matches_by_key_and_takes_the_old_files_latest_row():
    old = [step("train", "coop", "fastprompt", 4.0, 5.0, peak=200, run="r0"),
           step("train", "coop", "fastprompt", 2.0, 6.0, peak=250, run="r1"),   # the latest: the one compared
           step("train", "cocoop", "fastprompt", 3.0, 10.0, run="r1")]           # not rerun
    new = [step("train", "coop", "fastprompt", 1.5, 7.5, peak=200, run="r2"),
           step("eval", "coop", "fastprompt", 0.5, 3.0, run="r2", eval_images=32, eval_batch=8)]  # new
    changes, added, gone = compare.compare_rows(new, old)
    assert [c.new["case"] for c in changes] == ["coop"] and changes[0].old["run_id"] == "r1"
    assert changes[0].time_change == pytest.approx(1.5 / 2.0 - 1)
    assert changes[0].peak_change == pytest.approx(200 / 250 - 1)
    assert [r["kind"] for r in added] == ["eval"]
    assert [r["case"] for r in gone] == ["cocoop"]
    line = changes[0].line()
    assert "2 s -> 1.5 s (-25.0%)" in line and "speed-up 6x -> 7.5x" in line and "(-20.0%)" in line


def test_relative_change_of_missing_or_zero_values_is_none():
    assert compare.relative_change(None, 1.0) is None
    assert compare.relative_change(0.0, 1.0) is None
    assert compare.relative_change(2.0, 3.0) == pytest.approx(0.5)


def test_comparison_lines_name_both_devices_and_every_row():
    old = [dict(step("train", "coop", "fastprompt", 2.0, 6.0), device="Old CPU")]
    new = [step("train", "coop", "fastprompt", 1.0, 7.0), step("train", "maple", "fastprompt", 3.0, 4.0)]
    lines = compare.comparison_lines(new, old, "old.csv")
    assert "1 matching rows, 1 new, 0 not rerun" in lines[0] and "Old CPU" in lines[0] and "Test CPU" in lines[0]
    assert any("new: train maple fastprompt" in line for line in lines)


def test_select_run_picks_the_last_run_or_a_named_one():
    rows = [step("train", "coop", "fastprompt", 1.0, 7.0, run=r) for r in ("a", "b", "a2")]
    assert [r["run_id"] for r in rows_mod.select_run(rows)] == ["a2"]
    assert [r["run_id"] for r in rows_mod.select_run(rows, "b")] == ["b"]
    with pytest.raises(ValueError, match="not in the file"):
        rows_mod.select_run(rows, "zzz")


def test_uniform_rows_round_trip_through_the_csv_writer(tmp_path):
    path = str(tmp_path / "suite.csv")
    written = rows_mod.uniform([step("train", "coop", "fastprompt", 1.0, 7.0, peak=12.5),
                                dict(step("scaling", "coop", "reference", 9.0, ""), status="stopped", reason="budget")])
    report.append_csv(path, written)
    back = rows_mod.read_rows(path)
    assert [r["side"] for r in back] == ["fastprompt", "reference"]
    assert back[0]["peak_mb"] == "12.5" and back[0]["reason"] == "" and back[1]["reason"] == "budget"
    assert rows_mod.number(back[1], "peak_mb") is None and rows_mod.number(back[0], "median_s") == 1.0


# ---- growth --------------------------------------------------------------------------------------

def test_fit_line_recovers_a_line_and_its_projection():
    xs = [100, 250, 500, 1000]
    fit = growth.fit_line(xs, [0.5 + 0.002 * x for x in xs])
    assert fit.slope == pytest.approx(0.002) and fit.intercept == pytest.approx(0.5) and fit.r2 == pytest.approx(1.0)
    assert fit.at(21841) == pytest.approx(0.5 + 0.002 * 21841)
    noisy = growth.fit_line([1, 2, 3, 4], [1.0, 2.2, 2.8, 4.1])
    assert 0.9 < noisy.r2 < 1.0 and noisy.points == 4


def test_fit_line_needs_two_distinct_sizes():
    with pytest.raises(ValueError, match="two distinct sizes"):
        growth.fit_line([100, 100], [1.0, 1.1])
    with pytest.raises(ValueError, match="as many"):
        growth.fit_line([1, 2], [1.0])
    assert growth.fit_line([1, 2], [1.0, 3.0]).r2 != growth.fit_line([1, 2], [1.0, 3.0]).r2  # nan: no evidence


def test_predict_is_proportional_from_one_point_and_never_below_the_last_measured():
    assert growth.predict([], 500) == 0.0
    assert growth.predict([(100, 2.0)], 400) == pytest.approx(8.0)
    points = [(100, 1.0), (200, 1.5), (400, 2.5)]  # 0.5 + 0.005 x
    assert growth.predict(points, 1000) == pytest.approx(5.5)
    assert growth.predict([(100, 5.0), (200, 4.0)], 300) == pytest.approx(4.0)  # the fit falls; the cost does not


# ---- scaling decisions and fit rows ----------------------------------------------------------------

def test_a_curve_refuses_points_predicted_over_its_budgets():
    curve = scaling.Curve()
    assert curve.refusal(100, budget_s=10, memory_budget_mb=100) is None  # nothing measured yet: try it
    curve.points += [{"x": 100, "seconds": 1.0, "peak_mb": 40.0, "setup_s": 2.0},
                     {"x": 200, "seconds": 2.0, "peak_mb": 80.0, "setup_s": 2.0}]
    assert "memory budget" in curve.refusal(400, budget_s=1000, memory_budget_mb=100)
    assert "s budget" in curve.refusal(400, budget_s=5, memory_budget_mb=1000)  # 2 + 2 * 4 s > 5 s
    assert curve.refusal(250, budget_s=100, memory_budget_mb=1000) is None


def test_fit_rows_project_the_classes_axis_only():
    curve = scaling.Curve()
    curve.points += [{"x": x, "seconds": 0.1 + 0.01 * x, "peak_mb": 10 + 2 * x, "setup_s": 1.0} for x in (1, 2, 4)]
    row = scaling.fit_row({"case": "coop"}, curve, "classes")
    assert float(row["fit_s_per_unit"]) == pytest.approx(0.01) and float(row["fit_mb_per_unit"]) == pytest.approx(2)
    assert row["projected_units"] == 21841 and row["projected_mb"] == pytest.approx(10 + 2 * 21841)
    assert "projected_s" not in scaling.fit_row({"case": "maple"}, curve, "batch")
    single = scaling.Curve()
    single.points.append(curve.points[0])
    assert scaling.fit_row({}, single, "classes") is None


# ---- Markdown and plots -----------------------------------------------------------------------------

def _suite_and_scaling():
    suite = [step("train", "coop", "fastprompt", 2.0, 7.0, peak=240, target=7.0, memory_ratio=11.2, flop_ratio=6.5),
             step("train", "coop", "reference", 14.0, 7.0, peak=2690, memory_ratio=11.2),
             step("eval", "coop", "fastprompt", 9.0, 2.1, peak=100, eval_images=32, eval_batch=8, images_per_s=3.6),
             step("eval", "coop", "reference", 19.0, 2.1, peak=200, eval_images=32, eval_batch=8, images_per_s=1.7),
             dict(step("attention", "text", "cpu", 0.008, 2.3), mode="fwd+bwd", description="text suffix layer")]
    scale = []
    for side, slope in (("fastprompt", 0.01), ("reference", 0.14)):
        for x in (100, 250, 500):
            scale.append(dict(COMMON, run_id="s1", kind="scaling", case="coop", axis="classes", side=side,
                              status="measured", classes=x, images=4, median_s=1 + slope * x, peak_mb=10 * x))
    scale.append(dict(COMMON, run_id="s1", kind="scaling", case="coop", axis="classes", side="reference",
                      status="stopped", classes=1000, images=4, reason="predicted peak 10000 MiB > budget"))
    curve = scaling.Curve()
    curve.points += [{"x": x, "seconds": 1 + 0.14 * x, "peak_mb": 10.0 * x, "setup_s": 1.0} for x in (100, 250, 500)]
    scale.append(scaling.fit_row(dict(COMMON, run_id="s1", kind="scaling", case="coop", axis="classes",
                                      side="reference"), curve, "classes"))
    return suite, scale


def test_markdown_states_the_device_the_figures_and_where_a_side_stopped(tmp_path):
    suite, scale = _suite_and_scaling()
    text = table.markdown(suite, scale)
    assert "**Test CPU (2 threads)**" in text and "`0123456789-dirty`" in text
    assert "| coop: coop step | 2 s / 14 s | 7× (7×) | 6.5× | 240 / 2690 (11.2× less) | 3.6 / 1.7 | 2.1× |" in text
    assert "FLOP ratio: the reference's FLOPs per training step over fastprompt's" in text
    assert "| text (text suffix layer) | fwd+bwd | cpu | 8 ms | 2.3× |" in text
    assert "at 1000: predicted peak 10000 MiB > budget" in text
    assert "140 ms" in text and "3.06e+03 s" in text  # 0.14 s per class; 1 + 0.14 * 21841
    path = table.write_table(str(tmp_path / "out" / "README_table.md"), suite, scale)
    assert open(path).read() == text


def test_load_runs_reads_the_last_runs_and_says_when_there_is_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="run bench/suite/suite.py first"):
        table.load_runs(str(tmp_path))
    suite, scale = _suite_and_scaling()
    report.append_csv(str(tmp_path / "scaling.csv"), rows_mod.uniform(scale))
    suite_rows, scaling_rows = table.load_runs(str(tmp_path))
    assert suite_rows == [] and len(scaling_rows) == len(scale)


def test_the_table_takes_each_part_from_the_last_run_that_measured_it(tmp_path):
    train_old = [step("train", "coop", side, 3.0, 5.0, run="r0") for side in ("fastprompt", "reference")]
    train = [dict(step("train", "coop", side, 2.0, 7.0, run="r1"), command="python bench/suite/suite.py --parts train")
             for side in ("fastprompt", "reference")]
    evals = [dict(step("eval", "coop", side, 1.0, 6.0, run="r2", eval_images=8, eval_batch=4, images_per_s=4.0),
                  command="python bench/suite/suite.py --parts eval") for side in ("fastprompt", "reference")]
    report.append_csv(str(tmp_path / "suite.csv"), rows_mod.uniform(train_old + train + evals))
    suite_rows, _ = table.load_runs(str(tmp_path))
    assert [(r["kind"], r["run_id"]) for r in suite_rows] == [("train", "r1")] * 2 + [("eval", "r2")] * 2
    text = table.markdown(suite_rows, [])
    assert "Training steps (coop) measured on" in text
    assert "run `r1`, reproduced by `python bench/suite/suite.py --parts train`" in text
    assert "Evaluation (coop) measured on" in text
    assert "run `r2`, reproduced by `python bench/suite/suite.py --parts eval`" in text
    assert "| coop: coop step | 2 s / 2 s | 7× | — | — | 4 / 4 | 6× |" in text  # one line: r1's step, r2's eval
    named, _ = table.load_runs(str(tmp_path), suite_runs=["r0"])
    assert {r["run_id"] for r in named} == {"r0"}


def test_a_missed_speed_up_says_whether_the_flop_ratio_bounds_it():
    from bench.suite import suite_steps
    from bench.steps.step_cases import CASES

    spec = CASES["rpp"]  # target 4x
    bounded, = suite_steps.misses(spec, dict(speedup=3.9, flop_ratio=3.42))
    assert "3.90x < 4.0x" in bounded and "3.42x fastprompt's FLOPs" in bounded and "needs fewer FLOPs" in bounded
    slow, = suite_steps.misses(spec, dict(speedup=3.9, flop_ratio=6.0))
    assert "the FLOPs allow the target" in slow and "bench_breakdown.py" in slow
    assert suite_steps.misses(spec, dict(speedup=4.1, flop_ratio=3.42)) == []
    assert "FLOPs" not in suite_steps.misses(spec, dict(speedup=3.9))[0]  # a row measured before the FLOP column


def test_a_rerun_of_some_cases_replaces_only_their_rows():
    full = [step("train", case, side, 2.0, 7.0, run="r1") for case in ("coop", "maple", "rpp")
            for side in ("fastprompt", "reference")]
    maple = [step("train", "maple", side, 1.0, 9.0, run="r2") for side in ("fastprompt", "reference")]
    picked = rows_mod.latest_per_kind(full + maple)
    assert [(r["case"], r["run_id"]) for r in picked[::2]] == [("coop", "r1"), ("maple", "r2"), ("rpp", "r1")]


def test_plots_are_written_as_png(tmp_path):
    pytest.importorskip("matplotlib")
    from bench.suite import plots

    suite, scale = _suite_and_scaling()
    messages = plots.write_plots(suite, scale, str(tmp_path))
    names = sorted(os.listdir(tmp_path / "plots"))
    assert names == ["memory.png", "scaling_classes.png", "speedup.png"], messages
    for name in names:
        with open(tmp_path / "plots" / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_table_goes_between_the_readme_markers():
    readme = f"# x\n\nbefore\n{table.README_START}\nold table\n{table.README_END}\nafter\n"
    out = table.include_in(readme, "| new |\n")
    assert out == f"# x\n\nbefore\n{table.README_START}\n| new |\n{table.README_END}\nafter\n"
    assert table.include_in(out, "| newer |\n").count("| new") == 1  # replaced, not appended
    with pytest.raises(ValueError, match="bench table"):
        table.include_in("# no markers\n", "| t |\n")


def test_table_readme_fills_bench_readme_by_default(tmp_path, monkeypatch):
    with open(table.BENCH_README, encoding="utf-8") as f:  # the block the table goes into is bench/README.md's
        text = f.read()
    assert text.count(table.README_START) == 1 and text.count(table.README_END) == 1
    suite, scale = _suite_and_scaling()
    report.append_csv(str(tmp_path / "suite.csv"), rows_mod.uniform(suite))
    report.append_csv(str(tmp_path / "scaling.csv"), rows_mod.uniform(scale))
    readme = tmp_path / "README.md"
    readme.write_text(f"# bench\n{table.README_START}\nold\n{table.README_END}\nafter\n", encoding="utf-8")
    monkeypatch.setattr(table, "BENCH_README", str(readme))  # what a bare --readme writes
    assert table.main(["--no-plots", "--out", str(tmp_path), "--readme"]) == 0
    written = readme.read_text(encoding="utf-8")
    assert table.markdown(*table.load_runs(str(tmp_path))) in written and "old" not in written
    assert (tmp_path / table.TABLE_FILE).exists()
