"""Pretrained CLIP weights through open_clip: download as open_clip does, fail clearly offline.

``load_open_clip(name, pretrained)`` builds an open_clip model the way ``open_clip.create_model``
does — a tag's weights are downloaded from the Hugging Face Hub (or the tag's URL) into the
usual cache, with the Hub's progress bar — and adds what a user needs around it:

* weights already in the cache are read without touching the network;
* with the Hub offline (``HF_HUB_OFFLINE=1``) or unreachable, a missing checkpoint is one
  :class:`PretrainedNotAvailableError` naming the file, the cache it belongs in and how to fill
  it — instead of ``huggingface_hub``'s back-off (about 45 s and a dozen warnings per tag when
  the network is down);
* a ``pretrained`` path that does not exist is a ``FileNotFoundError``, not "unknown tag";
* a ``pretrained`` file that open_clip cannot load (a text file, an empty or truncated file, the
  weights of another architecture) or a folder is one :class:`PretrainedFileError` naming the path
  and what is wrong with it (:mod:`fastprompt.learners.weights_file`), instead of torch's or open_clip's
  traceback. The file is examined only after open_clip failed on it: a good file costs nothing.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Optional, Tuple
from urllib.parse import urlparse

from ..errors import PretrainedFileError, PretrainedNotAvailableError  # noqa: F401  (raised here)
from ..models import TokenizerNotAvailableError, load_hf_kernels_first, resolve_tokenizer  # noqa: F401  (raised here)
from .weights_file import CHECKPOINT_SUFFIXES, WHAT_TO_GIVE, folder_message, weights_file_problem

PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class WeightsSource:
    """Where open_clip fetches the weights of ``name``/``tag`` and where they are cached.

    Attributes:
        repo_id: Hugging Face repository, when open_clip downloads from the Hub.
        filenames: files open_clip tries in the repository, in its order (safetensors first).
        url: direct download address, when open_clip uses one instead of the Hub.
        file: a local file the tag was registered with (``open_clip`` ``file`` entries).
        cache_dir: the ``cache_dir`` passed to open_clip (``None``: the default caches).
    """

    name: str
    tag: str
    repo_id: Optional[str]
    filenames: Tuple[str, ...]
    url: Optional[str]
    file: Optional[str]
    cache_dir: Optional[str]

    @property
    def download_url(self) -> str:
        """The first address open_clip requests."""
        if self.repo_id:
            from huggingface_hub import hf_hub_url

            return hf_hub_url(self.repo_id, self.filenames[0])
        return self.url

    @property
    def cache_location(self) -> str:
        if self.repo_id:
            from huggingface_hub import constants

            return self.cache_dir or constants.HF_HUB_CACHE
        return self.cache_dir or os.path.expanduser("~/.cache/clip")

    def cached_file(self) -> Optional[str]:
        """Path of the weights open_clip would load, if they are already on disk."""
        if self.file:
            return self.file if os.path.isfile(self.file) else None
        if self.repo_id:
            from huggingface_hub import try_to_load_from_cache

            for filename in self.filenames:
                found = try_to_load_from_cache(self.repo_id, filename, cache_dir=self.cache_dir)
                if isinstance(found, str) and os.path.isfile(found):
                    return found
            return None
        path = os.path.join(self.cache_location, os.path.basename(self.url))
        return path if os.path.isfile(path) else None

    def missing_message(self, why: str) -> str:
        """One paragraph: what is missing, where it belongs, and the three ways to get it."""
        fetch = f"python -c \"import open_clip; open_clip.create_model('{self.name}', pretrained='{self.tag}')\""
        if self.repo_id:
            what = (f"file {self.filenames[0]}"
                    + "".join(f" (or {f})" for f in self.filenames[1:])
                    + f" of the Hugging Face repository {self.repo_id}")
            folder = "models--" + self.repo_id.replace("/", "--")
            fill = (f"on a machine with a network run `{fetch}` (or `hf download {self.repo_id} "
                    f"{self.filenames[0]}`) and copy the folder {folder} of its Hugging Face cache into "
                    f"{self.cache_location} here")
        else:
            what = f"file {os.path.basename(self.url)} from {self.url}"
            fill = f"download {self.url} into {self.cache_location}"
        return (f"pretrained weights {self.name!r}/{self.tag!r} are not available: {why}. Missing: {what}, "
                f"expected in the cache {self.cache_location}. To fill the cache, {fill}; or give the checkpoint's "
                "file path as the weights (pretrained=PATH in Python, --pretrained PATH on the command line); or "
                "use random weights (pretrained=None, --pretrained none).")


def weights_source(name: str, tag: str, cache_dir: Optional[str] = None) -> WeightsSource:
    """Resolve ``name``/``tag`` the way ``open_clip.pretrained.download_pretrained`` does."""
    import open_clip
    from open_clip import pretrained as oc_pretrained

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if cfg.get("file"):
        return WeightsSource(name, tag, None, (), None, cfg["file"], cache_dir)
    hub = cfg.get("hf_hub", "")
    if hub and oc_pretrained.has_hf_hub():
        repo_id, filename = os.path.split(hub)
        filename = filename or oc_pretrained.HF_WEIGHTS_NAME
        safe = tuple(oc_pretrained._get_safe_alternatives(filename))
        return WeightsSource(name, tag, repo_id, safe + (filename,), None, None, cache_dir)
    return WeightsSource(name, tag, None, (), cfg.get("url") or None, None, cache_dir)


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub read it at import, or as set in the environment since."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or flag in ("1", "ON", "YES", "TRUE")


def unreachable_reason(url: str, timeout: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """``None`` if ``url``'s server answers one HEAD request (any status), else why not.

    One attempt without retries, through huggingface_hub's HTTP session so that proxies and
    certificates are configured as for the download itself.
    """
    from huggingface_hub.utils import get_session

    try:
        get_session().head(url, timeout=timeout, follow_redirects=False)
    except Exception as err:  # the session's transport errors (DNS, refused, timeout, TLS)
        return f"cannot reach {urlparse(url).netloc} ({type(err).__name__}: {err})"
    return None


@contextlib.contextmanager
def _hub_offline_mode():
    """Let open_clip read the Hugging Face cache without trying the network."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def looks_like_path(pretrained: str) -> bool:
    """A ``pretrained`` value meant as a file (open_clip tags have no separators or suffixes)."""
    separators = [os.sep] + ([os.altsep] if os.altsep else [])
    return any(s in pretrained for s in separators) or pretrained.startswith("~") or \
        pretrained.lower().endswith(CHECKPOINT_SUFFIXES)


def recorded_pretrained(pretrained: Optional[str]) -> Optional[str]:
    """``pretrained`` as a checkpoint records it: tags as they are, files as absolute paths (so
    that ``from_pretrained`` finds them from another working directory)."""
    if pretrained is not None and os.path.isfile(os.path.expanduser(str(pretrained))):
        return os.path.abspath(os.path.expanduser(str(pretrained)))
    return pretrained


def load_open_clip(name: str, pretrained: Optional[str], device=None, precision: str = "fp32",
                   cache_dir: Optional[str] = None, check_tokenizer: bool = True):
    """``open_clip.create_model(name, pretrained)`` in eval mode, with the errors described above.

    ``pretrained``: an open_clip tag (downloaded into the cache on first use), the path of a
    checkpoint file, or ``None`` for random weights. ``check_tokenizer`` (default): resolve the
    architecture's tokenizer first (:func:`fastprompt.models.resolve_tokenizer`), so that one the
    caller will need and cannot have fails in milliseconds, before the weights and the build;
    ``False`` where the caller brings its own tokenizer.

    Raises:
        TokenizerNotAvailableError: (a ``PretrainedNotAvailableError``) with ``check_tokenizer``,
            the tokenizer needs a package that is not installed, or files that cannot be fetched.
        ValueError: unknown model name or tag (the message lists the known tags).
        PretrainedFileError: (a ``ValueError``) ``pretrained`` is a folder, or a file that is not a
            checkpoint of ``name``: the message names the path and what is wrong.
        FileNotFoundError: ``pretrained`` is a path and no file is there.
        PretrainedNotAvailableError: the tag's weights are not cached and the Hub is offline,
            unreachable, or refused the download.
    """
    import open_clip

    if name not in open_clip.list_models() and not name.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(f"unknown open_clip model {name!r}; see open_clip.list_models() for the names")
    if check_tokenizer:
        resolve_tokenizer(name, cache_dir=cache_dir)
    mode = contextlib.nullcontext()
    source = file_path = None
    if pretrained is not None:
        pretrained = str(pretrained)
        tags = open_clip.list_pretrained_tags_by_model(name)
        expanded = os.path.expanduser(pretrained)
        if os.path.isfile(expanded):
            pretrained = file_path = expanded
        elif looks_like_path(pretrained) or (os.path.isdir(expanded) and pretrained not in tags):
            path = os.path.abspath(expanded)
            if os.path.isdir(path):
                raise PretrainedFileError(folder_message(path))
            raise FileNotFoundError(f"pretrained checkpoint file not found: {path}")
        else:
            if pretrained not in tags:
                raise ValueError(f"unknown pretrained tag {pretrained!r} for {name!r}; known tags: {tags}, "
                                 "or pass the path of a local checkpoint file, or None for random weights")
            source = weights_source(name, pretrained, cache_dir)
            if source.cached_file() is not None:
                mode = _hub_offline_mode()
            elif source.file:
                raise FileNotFoundError(f"pretrained tag {name!r}/{pretrained!r} is registered with the file "
                                        f"{source.file}, which is not found")
            elif hub_offline() and source.repo_id:
                raise PretrainedNotAvailableError(source.missing_message("the Hugging Face Hub is offline "
                                                                         "(HF_HUB_OFFLINE=1)"))
            else:
                why = unreachable_reason(source.download_url)
                if why is not None:
                    raise PretrainedNotAvailableError(source.missing_message(why))
    load_hf_kernels_first()
    try:
        with mode:
            model = open_clip.create_model(name, pretrained=pretrained, device=device, precision=precision,
                                           cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001 - torch and safetensors raise many types for a bad file
        if file_path is not None:
            problem = weights_file_problem(name, file_path)
            if problem is None:  # the file looks right: the failure is not the user's to fix
                raise
            raise PretrainedFileError(f"pretrained weights file {os.path.abspath(file_path)} cannot be loaded into "
                                      f"open_clip model {name!r}: {problem}. {WHAT_TO_GIVE}") from err
        # open_clip reports a failed download (refused, not found, interrupted) as RuntimeError.
        if not isinstance(err, RuntimeError) or source is None or "download" not in str(err).lower():
            raise
        raise PretrainedNotAvailableError(source.missing_message(f"the download failed ({err})")) from err
    model.eval()
    return model

