"""A Hugging Face tokenizer that cannot be fetched (``transformers`` installed, no network, nothing
cached) is one named error saying the three ways out: a network once, a local copy, or ``tokenizer=``.

``transformers`` raises ``OSError`` there (checked by hand with ``HF_HUB_OFFLINE=1`` and with the
network unreachable: "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't
find them in the cached files."); open_clip's lookup is replaced by one raising it, so the test needs
neither the package nor the minute of retries a missing network costs.
"""
import open_clip
import pytest

from fastprompt.models import TokenizerNotAvailableError, resolve_tokenizer

OFFLINE = ("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in the "
           "cached files.\nCheck your internet connection or see how to run the library in offline mode.")


def test_an_unreachable_hugging_face_tokenizer_names_network_local_copy_and_tokenizer_argument(monkeypatch):
    def offline(name, *args, **kwargs):
        raise OSError(OFFLINE)

    monkeypatch.setattr(open_clip, "get_tokenizer", offline)
    with pytest.raises(TokenizerNotAvailableError) as refused:
        resolve_tokenizer("xlm-roberta-base-ViT-B-32")
    message = str(refused.value)
    assert "\n" not in message and "Hugging Face tokenizer 'xlm-roberta-base'" in message
    assert "once with a network" in message
    assert "HFTokenizer('/path/to/tokenizer_dir')" in message
    assert "from_model(model, classnames, tokenizer=...)" in message
