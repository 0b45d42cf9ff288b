"""The ``fastprompt`` command line: argument parsing and a short end-to-end ``demo`` run."""
import pytest
import torch

from fastprompt import cli, demo

# Small and quick: 2 classes, 2 shots, a few steps.
QUICK = ["--steps", "3", "--n-classes", "2", "--shots", "2", "--batch-size", "4"]


def parse(*argv):
    return cli.build_parser().parse_args(list(argv))


def test_demo_defaults():
    args = parse("demo")
    assert args.command == "demo"
    assert args.method == "rpp" and args.model is None and args.pretrained is None
    assert args.steps == 300 and args.batch_size == 16 and args.n_classes == 8
    assert args.lr == pytest.approx(0.002) and args.seed == 0 and args.device == "cpu"
    assert args.no_compare is False and args.csc is False
    assert args.noise is None and args.n_ctx is None and args.ctx_init is None


def test_demo_options_parse():
    args = parse("demo", "--method", "cocoop", "--model", "ViT-B-16", "--pretrained", "openai",
                 "--steps", "5", "--batch-size", "2", "--n-classes", "12", "--lr", "0.01", "--seed", "3",
                 "--no-compare", "--device", "cpu", "--noise", "0.5", "--shots", "4")
    assert (args.method, args.model, args.pretrained) == ("cocoop", "ViT-B-16", "openai")
    assert (args.steps, args.batch_size, args.n_classes, args.seed, args.shots) == (5, 2, 12, 3, 4)
    assert args.lr == pytest.approx(0.01) and args.noise == pytest.approx(0.5) and args.no_compare


def test_ctx_settings_follow_method_defaults():
    assert demo._ctx_settings(parse("demo")) == (4, "")
    assert demo._ctx_settings(parse("demo", "--method", "coop")) == (16, "")
    assert demo._ctx_settings(parse("demo", "--method", "cocoop")) == (4, "a photo of a")
    assert demo._ctx_settings(parse("demo", "--method", "coop", "--n-ctx", "8")) == (8, "")
    assert demo._ctx_settings(parse("demo", "--ctx-init", "a_photo_of")) == (3, "a_photo_of")
    assert demo._ctx_settings(parse("demo", "--method", "cocoop", "--ctx-init", "")) == (4, "")


def test_no_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


BAD_ARGS = [
    (["--steps", "0"], "--steps"),
    (["--steps", "many"], "--steps"),
    (["--batch-size", "-1"], "--batch-size"),
    (["--method", "nope"], "--method"),
    (["--lr", "0"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--n-classes", "1"], "--n-classes"),
    (["--n-classes", "1000"], "--n-classes"),
    (["--noise", "2"], "--noise"),
    (["--seed", "-1"], "--seed"),
    (["--pretrained", "openai"], "--pretrained needs --model"),
    (["--model", "ViT-B-16"], "needs --pretrained"),
    (["--model", "NoSuchNet-7", "--pretrained", "none"], "unknown open_clip model"),
    (["--device", "warp-drive"], "--device"),
    (["--method", "cocoop", "--csc"], "--csc"),
    (["--csc", "--ctx-init", "a photo of a"], "--csc"),
]


@pytest.mark.parametrize("extra,message", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_arguments_exit_2_with_one_line_error(extra, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0], err
    assert "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_device_without_cuda_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--device", "cuda"])
    assert exc.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_demo_rpp_default_end_to_end_with_comparison(capsys):
    assert cli.main(["demo", *QUICK]) == 0
    out = capsys.readouterr().out
    assert "fastprompt demo: rpp" in out and "held-out accuracy before training" in out
    assert "fastprompt step:" in out and "speed-up:" in out


def test_demo_coop_end_to_end(capsys):
    assert cli.main(["demo", "--method", "coop", *QUICK, "--no-compare"]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy before training" in out
    assert "final train loss" in out and "chance 50.0%" in out
    assert "speed-up" not in out


def test_demo_coop_with_comparison(capsys):
    assert cli.main(["demo", "--method", "coop", *QUICK, "--csc"]) == 0
    out = capsys.readouterr().out
    assert "fastprompt step:" in out and "reference step:" in out and "speed-up:" in out


def test_demo_cocoop_with_comparison(capsys):
    assert cli.main(["demo", "--method", "cocoop", *QUICK, "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "cocoop" in out and "speed-up:" in out


def test_missing_pretrained_weights_is_a_clean_error(monkeypatch, capsys):
    from fastprompt.learners import pretrained as loading

    # Pretend the weights are not cached, whatever this machine has, and the Hub is offline.
    monkeypatch.setattr(loading.WeightsSource, "cached_file", lambda self: None)
    monkeypatch.setattr(loading, "hub_offline", lambda: True)
    status = cli.main(["demo", "--model", "ViT-B-16", "--pretrained", "openai", *QUICK, "--no-compare"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastprompt demo: error: cannot load ViT-B-16 (openai)")
    assert "Traceback" not in err


def test_unknown_pretrained_tag_is_a_clean_error(capsys):
    status = cli.main(["demo", "--model", "ViT-B-16", "--pretrained", "no-such-tag", *QUICK, "--no-compare"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-tag" in err


def test_env_is_a_subcommand_that_prints_the_report(capsys):
    assert "env" in cli.build_parser().format_help()
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    for label in ("fastprompt", "torch", "open_clip", "extension cpu", "backend eager on cpu", "auto on cpu"):
        assert any(line.startswith(label + " ") for line in out.splitlines()), f"no {label!r} row:\n{out}"


def test_env_compile_check_hands_its_options_to_the_check(capsys):
    """``--compile-check`` forwards what follows it to the Triton compile check (which needs a GPU
    compiler, tested in test_triton.py): its own help, under the subcommand's name, and no report."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["env", "--compile-check", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fastprompt env --compile-check") and "--arch" in out and "--head-dim" in out
    with pytest.raises(SystemExit) as exit_:
        cli.main(["env", "--compile-check", "--dtype", "fp8"])
    assert exit_.value.code == 2 and "unknown ['fp8']" in capsys.readouterr().err
