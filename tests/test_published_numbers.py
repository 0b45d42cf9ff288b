"""Published numbers say what they are: every block carries its source and whether it was checked
against it (the loader refuses a file without them, naming the file and the rows), fastprompt's
average HM is computed as the source defines its own, and the reports mark unchecked numbers."""
import csv
import glob
import io
import os

import pytest

from fastprompt.errors import ConfigError
from fastprompt.protocols import published as published_module
from fastprompt.protocols.definitions import DATASETS_11, PROTOCOL_RECIPES, XD_TARGETS
from fastprompt.protocols.published import HM_OF, PUBLISHED_DIR, load_published, published
from fastprompt.protocols.report import UNCHECKED, table_csv, table_markdown
from fastprompt.protocols.results import RunResult
from fastprompt.protocols.tables import build_tables, harmonic_mean
from fastprompt.train.config import load_recipe

SHIPPED = sorted(glob.glob(os.path.join(PUBLISHED_DIR, "*.yaml")))

# Base / Novel pairs far apart on some datasets, so that the HM of the averages and the mean of the
# per-dataset HMs differ by points, not by rounding: (90, 10) has HM 18 while it adds 50 to both means.
_PAIRS = [(90.0, 10.0), (60.0, 60.0), (80.0, 40.0), (50.0, 70.0)]


def _write(folder, method, text):
    path = folder / f"{method}.yaml"
    path.write_text(text)
    return str(path)


def _base2new_runs(method, datasets):
    """One seed per dataset, Base / Novel from ``_PAIRS`` in turn."""
    return [RunResult("base2new", method, d, 16, 1, _PAIRS[i % len(_PAIRS)][0],
                      {(d, "new"): _PAIRS[i % len(_PAIRS)][1]}, "") for i, d in enumerate(datasets)]


def test_every_shipped_file_passes_and_says_what_each_number_is():
    assert {os.path.basename(p)[:-5] for p in SHIPPED} <= set(PROTOCOL_RECIPES)
    for path in SHIPPED:
        for protocol, pub in load_published(path).items():
            for block in pub.blocks:
                assert block.source and isinstance(block.checked, bool), (path, protocol)
                if block.checked:  # what was checked is pinned: a repository commit, or the paper's abstract
                    assert " @ " in block.source or "abstract" in block.source, (path, block.source)
                if "hm" in block.rows.get("average", {}):
                    assert block.hm_of in HM_OF, (path, block.source)
                if not block.compared:
                    assert block.note, (path, block.source)


@pytest.mark.parametrize("missing", ["source", "checked"])
def test_a_block_without_source_or_checked_is_refused_naming_file_and_rows(tmp_path, missing):
    fields = {"source": '    source: "CoCoOp paper (CVPR 2022), Table 2"\n', "checked": "    checked: false\n"}
    text = ("method: coop\ncrossdataset:\n  - " + "".join(v for k, v in fields.items() if k != missing).lstrip()
            + "    rows:\n      dtd: {accuracy: 45.0}\n")
    path = _write(tmp_path, "coop", text)
    with pytest.raises(ConfigError) as exc:
        load_published(path)
    message = str(exc.value)
    assert path in message and "crossdataset block 1 (rows dtd)" in message and f"has no {missing!r}" in message


@pytest.mark.parametrize("block, message", [
    ('source: "s"\n    checked: "no"\n    rows: {dtd: {accuracy: 45.0}}', "'checked' must be true or false"),
    ('source: "s"\n    checked: true\n    rows: {dtd: {accuracy: 145.0}}', "expected an accuracy in % (0-100)"),
    ('source: "s"\n    checked: true\n    rows: {dtdd: {accuracy: 45.0}}', "row 'dtdd' is not a CoOp dataset"),
    ('source: "s"\n    checked: true\n    rows: {dtd: {acc: 45.0}}', "column 'acc' is not one of accuracy"),
    ('source: "s"\n    checked: true\n    sauce: x\n    rows: {dtd: {accuracy: 45.0}}', "unknown key(s) sauce"),
    ('source: "s"\n    checked: true\n    role: reference\n    rows: {dtd: {accuracy: 45.0}}',
     "a 'reference' block needs a 'note'"),
])
def test_malformed_blocks_are_refused(tmp_path, block, message):
    path = _write(tmp_path, "coop", f"method: coop\ncrossdataset:\n  - {block}\n")
    with pytest.raises(ConfigError, match="crossdataset block 1") as exc:
        load_published(path)
    assert message in str(exc.value) and path in str(exc.value)


def test_an_average_hm_needs_its_definition_and_must_agree_with_it(tmp_path):
    row = "    rows:\n      average: {base: 90.0, novel: 50.0, hm: %s}\n"
    head = 'method: coop\nbase2new:\n  - source: "s"\n    checked: true\n'
    with pytest.raises(ConfigError, match="'hm_of' must say how the source defines it"):
        load_published(_write(tmp_path, "coop", head + row % "64.29"))
    # HM(90, 50) = 64.29: 60.00 cannot be the HM of the averages the block prints beside it
    with pytest.raises(ConfigError, match="is not the HM of its average base and novel"):
        load_published(_write(tmp_path, "coop", head + "    hm_of: averages\n" + row % "60.0"))
    assert load_published(_write(tmp_path, "coop", head + "    hm_of: datasets\n" + row % "60.0"))


def test_a_row_in_two_compared_blocks_or_an_average_its_rows_contradict_is_refused(tmp_path):
    block = '  - source: "%s"\n    checked: false\n    rows:\n%s'
    two = "method: coop\ndg:\n" + block % ("a", "      average: {accuracy: 60.0}\n") \
        + block % ("b", "      average: {accuracy: 61.0}\n")
    with pytest.raises(ConfigError, match="row 'average' is in two compared blocks"):
        load_published(_write(tmp_path, "coop", two))
    rows = "".join(f"      {d}: {{accuracy: {v}}}\n" for d, v in
                   (("imagenetv2", 60.0), ("imagenet-sketch", 50.0), ("imagenet-adversarial", 50.0),
                    ("imagenet-rendition", 80.0), ("average", 61.0)))
    with pytest.raises(ConfigError, match=r"average accuracy 61.0 is not the mean of the block's 4 rows \(60.00\)"):
        load_published(_write(tmp_path, "coop", "method: coop\ndg:\n" + block % ("a", rows)))


def test_the_average_hm_is_computed_as_the_published_source_defines_it(tmp_path, monkeypatch):
    datasets = list(DATASETS_11)
    base = [_PAIRS[i % len(_PAIRS)][0] for i in range(len(datasets))]
    novel = [_PAIRS[i % len(_PAIRS)][1] for i in range(len(datasets))]
    of_averages = harmonic_mean(sum(base) / len(base), sum(novel) / len(novel))
    of_datasets = sum(harmonic_mean(b, n) for b, n in zip(base, novel)) / len(base)
    assert abs(of_averages - of_datasets) > 5  # the two definitions give different numbers here
    monkeypatch.setattr(published_module, "PUBLISHED_DIR", str(tmp_path))
    for hm_of, expected, hm in (("averages", of_averages, 59.98), ("datasets", of_datasets, 55.0)):
        _write(tmp_path, "coop", 'method: coop\nbase2new:\n  - source: "a paper, Table 1"\n    checked: false\n'
               f"    hm_of: {hm_of}\n    rows:\n      average: {{base: 61.0, novel: 59.0, hm: {hm}}}\n")
        (table,) = build_tables(_base2new_runs("coop", datasets))
        average = table.rows[-1]
        assert average.cells["hm"].mean == pytest.approx(expected, rel=1e-12)
        assert average.published == {"base": 61.0, "novel": 59.0, "hm": hm}
        assert ("mean of the per-dataset HMs" if hm_of == "datasets" else "HM of the average Base and the average "
                "Novel") in table_markdown(table)


def test_pre_is_compared_by_the_mean_of_its_8_datasets_hms():
    eight = published("pre", "base2new").average_over
    assert len(eight) == 8 and published("pre", "base2new").hm_of == "datasets"
    (table,) = build_tables(_base2new_runs("pre", eight))
    rows = table.rows[:-1]
    assert table.rows[-1].cells["hm"].mean == pytest.approx(sum(r.cells["hm"].mean for r in rows) / 8, rel=1e-12)
    assert table.rows[-1].published == {"base": 82.14, "novel": 71.88, "hm": 76.27}
    # with no published average HM (softcpt): CoCoOp's definition, said so
    (table,) = build_tables(_base2new_runs("softcpt", DATASETS_11[:3]))
    average = table.rows[-1].cells
    assert average["hm"].mean == pytest.approx(harmonic_mean(average["base"].mean, average["novel"].mean), rel=1e-12)
    assert "softcpt has no published average HM" in table_markdown(table)


def test_reports_mark_unchecked_numbers_and_name_every_source():
    (table,) = build_tables(_base2new_runs("cocoop", DATASETS_11))
    md, rows = table_markdown(table), list(csv.DictReader(io.StringIO(table_csv(table))))
    imagenet = "| ImageNet | 90.00 ± 0.00 | 10.00 ± 0.00 | 18.00 | 75.98† | 70.43† | 73.10† | 1 |"
    assert imagenet in md and "| 80.47 | 71.69 | 75.83 | 1 |" in md  # the README-checked average: no mark
    assert f"{UNCHECKED} A published number not checked against its source yet" in md
    assert "Published: CoCoOp paper (CVPR 2022), Table 1" in md and "(rows: ImageNet; † not checked against it yet)" in md
    assert "muzairkhattak/multimodal-prompt-learning @ 69bce21" in md and "(rows: Average; checked against it)" in md
    by_row = {r["dataset"]: r for r in rows}
    assert (by_row["imagenet"]["published_checked"], by_row["average"]["published_checked"]) == ("false", "true")
    assert by_row["imagenet"]["published_source"].startswith("CoCoOp paper (CVPR 2022), Table 1")
    assert (by_row["dtd"]["published_source"], by_row["dtd"]["published_checked"]) == ("", "")


def test_pomp_compares_the_released_checkpoint_and_notes_the_paper_headline():
    runs = [RunResult("xd", "pomp", "imagenet", 16, 1, 70.0, {(t, "all"): 66.0 for t in XD_TARGETS}, "")]
    xd = next(t for t in build_tables(runs) if t.protocol == "crossdataset")
    assert xd.rows[-1].published == {"accuracy": 66.7}
    assert "docs/MODELS.md" in xd.rows[-1].published_from.source
    md = table_markdown(xd)
    assert "Also published, not beside a row: POMP paper (NeurIPS 2023; arXiv 2304.04704), abstract" in md
    assert "Average: Accuracy 67.00 (the paper's headline" in md


def test_vpt_published_row_is_the_shipped_recipe():
    (block,) = published("vpt", "base2new").blocks
    assert "configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml" in block.source
    vpt = load_recipe("vpt/vit_b16_c2_ep5_batch4_4")["TRAINER"]["VPT"]
    assert (vpt["N_CTX_VISION"], vpt["PROMPT_DEPTH_VISION"]) == (8, 12)
    assert PROTOCOL_RECIPES["vpt"]["base2new"].recipe == "vpt/vit_b16_c2_ep5_batch4_4" and not \
        PROTOCOL_RECIPES["vpt"]["base2new"].overrides
