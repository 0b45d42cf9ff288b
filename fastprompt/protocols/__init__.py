"""The evaluation protocols of the CoOp family, run as grids of training runs, and their tables.

* ``definitions.py`` — base-to-novel, few-shot, cross-dataset and domain generalization, and the
  recipe each method uses in each (:data:`PROTOCOL_RECIPES`);
* ``grid.py`` — a protocol's runs (datasets x seeds x shots), each a :func:`fastprompt.train.train_run`,
  skipped when finished, resumed when partial (``fastprompt run``);
* ``results.py`` / ``tables.py`` / ``report.py`` — the runs' ``eval.json`` files collected into the
  papers' tables (harmonic mean, averages), written as CSV, Markdown and plots
  (``fastprompt results``);
* ``published.py`` (+ ``published/*.yaml``) — the papers' own numbers with their sources, shown
  beside ours;
* ``cli.py`` — the ``fastprompt run`` and ``fastprompt results`` subcommands.

It imports :mod:`fastprompt.train`; the run layer never imports it.

Its names are imported on first use (:mod:`fastprompt.lazy`), so ``fastprompt run --help``
loads no torch.
"""
from ..lazy import lazy_exports

_EXPORTS = {
    ".definitions": ("PROTOCOL_RECIPES", "PROTOCOLS", "check_protocol", "recipe_for"),
    ".grid": ("plan", "run_grid"),
    ".tables": ("build_tables",),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
