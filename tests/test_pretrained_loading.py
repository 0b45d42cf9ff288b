"""Pretrained weights through open_clip: normal download online, one clear error offline.

This machine has no network, so the online branch is tested at its boundary: the
``hf_hub_download`` call open_clip makes is replaced by one that serves a file written here,
and the test checks that fastprompt let it through (Hub not forced offline, open_clip's own
arguments) and that the model carries the served weights.
"""
import json
import time

import pytest
import torch

import fastprompt
from fastprompt.learners import pretrained as loading

TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32,
                                        "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
REPO = "fastprompt-test/tiny-clip"


@pytest.fixture
def hub_model(tmp_path, monkeypatch):
    """A tiny open_clip architecture ``fp-hub-tiny`` whose tag ``testtag`` lives on the Hub as
    ``REPO`` (open_clip's own registry format), and a weights file to serve for it."""
    import open_clip
    from open_clip import pretrained as oc_pretrained

    (tmp_path / "fp-hub-tiny.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(tmp_path / "fp-hub-tiny.json")
    monkeypatch.setitem(oc_pretrained._PRETRAINED, "fp-hub-tiny",
                        {"testtag": oc_pretrained._pcfg(hf_hub=f"{REPO}/")})
    torch.manual_seed(3)
    source = open_clip.create_model("fp-hub-tiny", pretrained=None)
    weights = tmp_path / "served.pt"
    torch.save(source.state_dict(), weights)
    monkeypatch.setattr(loading, "hub_offline", lambda: False)
    return source, str(weights), str(tmp_path / "hf-cache")


def _serve(monkeypatch, weights, calls):
    """Replace the download open_clip makes; record its arguments and the Hub's offline flag."""
    from huggingface_hub import constants
    from open_clip import pretrained as oc_pretrained

    def fake_hf_hub_download(repo_id, filename, revision=None, cache_dir=None):
        calls.append(dict(repo_id=repo_id, filename=filename, cache_dir=cache_dir,
                          offline=constants.HF_HUB_OFFLINE))
        return weights

    monkeypatch.setattr(oc_pretrained, "hf_hub_download", fake_hf_hub_download)


def test_online_a_missing_tag_is_downloaded_the_way_open_clip_does(hub_model, monkeypatch, classnames):
    source, weights, cache = hub_model
    calls, probes = [], []
    _serve(monkeypatch, weights, calls)
    monkeypatch.setattr(loading, "unreachable_reason", lambda url, timeout=None: probes.append(url))
    learner = fastprompt.CoOpLearner.from_open_clip("fp-hub-tiny", "testtag", classnames, n_ctx=2, cache_dir=cache)
    # open_clip asks for its safetensors alternative first, in the user's cache, with the Hub online.
    assert calls[0] == dict(repo_id=REPO, filename="open_clip_model.safetensors", cache_dir=cache, offline=False)
    assert probes == [f"https://huggingface.co/{REPO}/resolve/main/open_clip_model.safetensors"]
    for (name, a), b in zip(learner.clip.state_dict().items(), source.state_dict().values()):
        assert torch.equal(a, b), name
    assert learner.pretrained == "testtag"


def test_offline_a_missing_tag_is_one_error_saying_what_and_how(hub_model, monkeypatch):
    _, weights, cache = hub_model
    calls = []
    _serve(monkeypatch, weights, calls)
    monkeypatch.setattr(loading, "hub_offline", lambda: True)
    with pytest.raises(fastprompt.PretrainedNotAvailableError) as info:
        loading.load_open_clip("fp-hub-tiny", "testtag", cache_dir=cache)
    message = str(info.value)
    for part in ("HF_HUB_OFFLINE", "open_clip_model.safetensors", "open_clip_pytorch_model.bin", REPO, cache,
                 f"hf download {REPO}", "models--fastprompt-test--tiny-clip", "pretrained=None"):
        assert part in message, part
    assert calls == []  # nothing tried the network


def test_hf_hub_offline_environment_variable_counts(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert loading.hub_offline()


def test_unreachable_hub_is_one_quick_error_without_retries(hub_model, monkeypatch):
    _, weights, cache = hub_model
    calls = []
    _serve(monkeypatch, weights, calls)
    monkeypatch.setattr(loading, "unreachable_reason",
                        lambda url, timeout=None: "cannot reach huggingface.co (ConnectError: no route)")
    with pytest.raises(fastprompt.PretrainedNotAvailableError, match="cannot reach huggingface.co") as info:
        loading.load_open_clip("fp-hub-tiny", "testtag", cache_dir=cache)
    assert "open_clip_model.safetensors" in str(info.value)
    assert calls == []  # no download attempt, hence no back-off loop


def test_the_reachability_probe_is_one_attempt():
    """A name that cannot resolve (reserved TLD) fails at once instead of retrying with back-off."""
    start = time.perf_counter()
    reason = loading.unreachable_reason("https://fastprompt-probe.invalid/file", timeout=5.0)
    assert reason is not None and "fastprompt-probe.invalid" in reason
    assert time.perf_counter() - start < 5.0


def test_a_failed_download_becomes_the_same_clear_error(hub_model, monkeypatch):
    from open_clip import pretrained as oc_pretrained

    _, _, cache = hub_model
    monkeypatch.setattr(loading, "unreachable_reason", lambda url, timeout=None: None)

    def refused(repo_id, filename, revision=None, cache_dir=None):
        raise OSError("401 Client Error: gated repository")

    monkeypatch.setattr(oc_pretrained, "hf_hub_download", refused)
    with pytest.raises(fastprompt.PretrainedNotAvailableError, match="download failed.*gated repository"):
        loading.load_open_clip("fp-hub-tiny", "testtag", cache_dir=cache)


def test_cached_weights_load_without_the_network(hub_model, monkeypatch):
    _, weights, cache = hub_model
    calls = []
    _serve(monkeypatch, weights, calls)
    monkeypatch.setattr(loading.WeightsSource, "cached_file", lambda self: weights)
    monkeypatch.setattr(loading, "unreachable_reason", lambda *a, **k: pytest.fail("probed the network"))
    loading.load_open_clip("fp-hub-tiny", "testtag", cache_dir=cache)
    assert calls and all(call["offline"] for call in calls)


def test_real_tags_resolve_to_open_clips_files(tmp_path):
    source = loading.weights_source("ViT-B-16", "openai", str(tmp_path))
    assert source.repo_id == "timm/vit_base_patch16_clip_224.openai"
    assert source.filenames == ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    assert source.cached_file() is None
    snapshot = tmp_path / "models--timm--vit_base_patch16_clip_224.openai" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"x")
    assert source.cached_file().endswith("open_clip_pytorch_model.bin")


def test_a_checkpoint_path_that_does_not_exist_is_file_not_found(tmp_path):
    missing = tmp_path / "weights" / "vit_b16.pt"
    with pytest.raises(FileNotFoundError, match="file not found.*vit_b16.pt"):
        loading.load_open_clip("ViT-B-16", str(missing))
    with pytest.raises(FileNotFoundError, match="file not found"):
        loading.load_open_clip("ViT-B-16", "my_weights.safetensors")
    with pytest.raises(ValueError, match="unknown pretrained tag 'not-a-tag'"):
        loading.load_open_clip("ViT-B-16", "not-a-tag")


def test_from_pretrained_refuses_to_rebuild_a_random_backbone(tmp_path, classnames):
    import open_clip

    (tmp_path / "fp-tiny-random.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(tmp_path / "fp-tiny-random.json")
    learner = fastprompt.CoOpLearner.from_open_clip("fp-tiny-random", None, classnames, n_ctx=2)
    learner.save_pretrained(str(tmp_path / "prompts"))
    with pytest.raises(ValueError, match="random weights.*model=") as info:
        fastprompt.CoOpLearner.from_pretrained(str(tmp_path / "prompts"))
    assert "fp-tiny-random" in str(info.value)
    again = fastprompt.CoOpLearner.from_pretrained(str(tmp_path / "prompts"), model=learner.clip)
    assert torch.equal(again.ctx, learner.ctx)


def test_from_pretrained_finds_a_checkpoint_file_from_another_directory(tmp_path, monkeypatch, classnames):
    import open_clip

    (tmp_path / "fp-tiny-file.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(tmp_path / "fp-tiny-file.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("fp-tiny-file").state_dict(), tmp_path / "w.pt")
    monkeypatch.chdir(tmp_path)
    learner = fastprompt.CoOpLearner.from_open_clip("fp-tiny-file", "w.pt", classnames, n_ctx=2)
    learner.save_pretrained(str(tmp_path / "prompts"))
    assert learner.pretrained == str(tmp_path / "w.pt")
    monkeypatch.chdir("/")
    again = fastprompt.CoOpLearner.from_pretrained(str(tmp_path / "prompts"))
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again(images), learner(images))
    (tmp_path / "w.pt").unlink()
    with pytest.raises(FileNotFoundError, match="file not found"):
        fastprompt.CoOpLearner.from_pretrained(str(tmp_path / "prompts"))


def test_a_tag_registered_with_a_missing_file_is_file_not_found(hub_model, monkeypatch, tmp_path):
    from open_clip import pretrained as oc_pretrained

    monkeypatch.setitem(oc_pretrained._PRETRAINED, "fp-hub-tiny",
                        {"testtag": oc_pretrained._pcfg(file=str(tmp_path / "gone.safetensors"))})
    with pytest.raises(FileNotFoundError, match="gone.safetensors, which is not found"):
        loading.load_open_clip("fp-hub-tiny", "testtag")
