"""The whole benchmark suite in one command, and what it writes:

- ``suite``: the command (``python bench/suite/suite.py``); its parts ``suite_steps`` (train, eval),
  ``suite_attention`` (attention) and ``scaling`` (with ``growth``: the fitted lines, projections
  and budget predictions; also a command of its own);
- ``rows``: which columns identify a measurement, and reading runs back from a CSV;
- ``compare`` (two runs, row by row), ``table`` (the Markdown table of ``bench/README.md``) and
  ``plots`` (PNGs), from the CSVs.
"""
