"""``fastprompt data pack`` and WebDataset shard reading: contents, corrupt samples, resume."""
import io
import os
import tarfile

import pytest

from fastprompt.cli import main as cli_main
from fastprompt.data import DataError, ShardDataset, load_imagenet21k, pack_folder, read_class_table
from fastprompt.data import pack as pack_module
from fastprompt.testing.fake_imagenet21k import make_imagenet21k
from fastprompt.testing.fake_trees import tiny_jpeg

pytest.importorskip("webdataset")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("in21k")
    from fastprompt.data import universe_wnids

    wnids = list(universe_wnids("winter21")[:300])
    make_imagenet21k(str(root), 300, 3, wnids=wnids, corrupt=[(wnids[5], 0), (wnids[77], 2)])
    return str(root), wnids


def _samples(out, **kwargs):
    ds = ShardDataset(out, **kwargs)
    return ds, [(img.getpixel((4, 4)), label) for img, label in ds]


def test_pack_writes_subset_and_class_table(tree, tmp_path):
    root, wnids = tree
    out = str(tmp_path / "shards")
    summary = pack_folder(root, out, shots=2, seed=7, shard_size=128, progress=False)
    assert summary.corrupt == sum(1 for f in summary.corrupt_files) and summary.shards == 5  # 600 planned
    ds = load_imagenet21k(root, shots=2, seed=7, cache_root=str(tmp_path / "c"))
    bad = {os.path.basename(line.split(":")[0]) for line in summary.corrupt_files}
    expected = sorted(it.label for it in ds.train if os.path.basename(it.path) not in bad)
    assert summary.samples == len(expected) == 600 - summary.corrupt
    reader, samples = _samples(out)
    assert sorted(label for _, label in samples) == expected and reader.skipped == 0
    assert reader.num_samples == summary.samples
    table = read_class_table(out)
    assert table.wnids == wnids and reader.classnames == table.names
    labels_in_first = {label for _, label in samples[:128]}
    assert len(labels_in_first) > 50  # shuffled: a shard mixes classes


def test_corrupt_sample_in_a_shard_is_skipped_and_counted(tree, tmp_path):
    root, _ = tree
    out = tmp_path / "shards"
    pack_folder(root, str(out), shots=1, seed=0, shard_size=1000, progress=False)
    shard = out / "shard-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    n_before = sum(1 for m, _ in members if m.name.endswith(".cls"))
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            if m.name.startswith("000000_00003."):
                data = b"junk" if m.name.endswith(".jpg") else data
            if m.name.startswith("000000_00004.") and m.name.endswith(".cls"):
                continue  # a sample without its label
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
        extra = tarfile.TarInfo("999999_00000.jpg")
        data = tiny_jpeg()
        extra.size = len(data)
        tar.addfile(extra, io.BytesIO(data))  # no cls either
    reader, samples = _samples(str(out))
    assert len(samples) == n_before - 2 and reader.skipped == 3


def test_pack_resumes_after_the_last_complete_shard(tree, tmp_path, monkeypatch):
    root, _ = tree
    whole = str(tmp_path / "whole")
    pack_folder(root, whole, shots=2, seed=3, shard_size=100, progress=False)
    out = str(tmp_path / "resumed")
    real = pack_module._write_shard
    calls = []

    def failing(out_, index, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # interrupted while writing the third shard
        calls.append(index)
        return real(out_, index, *args, **kwargs)

    monkeypatch.setattr(pack_module, "_write_shard", failing)
    with pytest.raises(KeyboardInterrupt):
        pack_folder(root, out, shots=2, seed=3, shard_size=100, progress=False)
    assert sorted(f for f in os.listdir(out) if f.endswith(".tar")) == ["shard-000000.tar", "shard-000001.tar"]
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]  # the interrupted shard left no temp file
    monkeypatch.setattr(pack_module, "_write_shard", real)
    summary = pack_folder(root, out, shots=2, seed=3, shard_size=100, progress=False)
    assert summary.resumed_shards == 2 and summary.shards == 6
    for name in sorted(os.listdir(whole)):
        if name.endswith(".tar") or name in ("classes.json", "shards.json"):
            assert open(os.path.join(out, name), "rb").read() == open(os.path.join(whole, name), "rb").read(), name
    with pytest.raises(DataError, match="other arguments"):
        pack_folder(root, out, shots=2, seed=4, shard_size=100, progress=False)


def test_pack_command_line(tree, tmp_path, capsys):
    root, _ = tree
    out = str(tmp_path / "cli")
    argv = ["data", "pack", root, out, "--shots", "1", "--seed", "2", "--shard-size", "64", "--no-progress",
            "--universe", "winter21"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "into 5 shards" in printed and "unreadable image(s) skipped" in printed
    assert len(read_class_table(out)) == 10450
    assert cli_main(argv) == 0 and "5 already done" in capsys.readouterr().out
    assert cli_main(["data", "pack", str(tmp_path / "nothing"), str(tmp_path / "o2"), "--no-progress"]) == 2
    assert "no ImageNet-21K-P tree" in capsys.readouterr().err


def test_shards_split_by_worker_and_shuffle(tree, tmp_path):
    root, _ = tree
    out = str(tmp_path / "s")
    pack_folder(root, out, shots=1, seed=0, shard_size=50, progress=False)
    plain = [label for _, label in ShardDataset(out)]
    shuffled = ShardDataset(out, shuffle_shards=True, shuffle_buffer=64, seed=1)
    first = [label for _, label in shuffled]
    assert sorted(first) == sorted(plain) and first != plain
    assert [label for _, label in shuffled] == first  # same epoch, same order
    shuffled.set_epoch(1)
    assert [label for _, label in shuffled] != first


def test_a_shard_cut_at_a_header_boundary_is_caught(tree, tmp_path, caplog):
    """Cut between two samples a shard is a valid tar of fewer samples: it streamed them with
    ``skipped=0`` and no word, and ``count_samples`` agreed with the cut file."""
    root, _ = tree
    out = tmp_path / "shards"
    summary = pack_folder(root, str(out), shots=1, seed=0, shard_size=100, progress=False)
    shard = out / "shard-000001.tar"
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    cut = next(m.offset for m in members if m.name.startswith("000001_00010."))
    with open(shard, "r+b") as f:  # keep samples 0..9, then the two zero blocks that end a tar
        f.truncate(cut)
        f.seek(cut)
        f.write(b"\0" * 1024)
    with pytest.raises(DataError, match=r"shard-000001.tar: 10 samples, 100 when packed"):
        ShardDataset(str(out))
    with caplog.at_level("WARNING"):
        reader, samples = _samples(str(out), shard_check="warn")
    assert len(samples) == summary.samples - 90 and "differ from shards.json" in caplog.text


@pytest.mark.parametrize("index", ['{"samples": 3}', '{"samples": 3, "shards": [{"file": "a.tar"}]}', "[1, 2]",
                                   "{not json"])
def test_a_malformed_index_is_a_data_error(tmp_path, index):
    (tmp_path / "shards.json").write_text(index)
    with pytest.raises(DataError, match="shards.json is not a fastprompt shard index"):
        ShardDataset(str(tmp_path))

