"""Argument types and the parser class shared by every ``fastprompt`` subcommand.

Standard library only, so the subcommand modules (``fastprompt/data/cli.py``,
``fastprompt/train/cli.py``, ...) import it without importing the command line itself.
"""
from __future__ import annotations

import argparse
import math

__all__ = ["OneLineErrorParser", "number_type", "positive_int", "nonnegative_int", "positive_float",
           "unit_float", "no_check", "options_among_overrides"]


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage dump), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def number_type(convert, valid, expected: str):
    """An argparse ``type`` that converts with ``convert`` and accepts values where ``valid`` holds."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value
    return parse


positive_int = number_type(int, lambda v: v >= 1, "a positive integer")
nonnegative_int = number_type(int, lambda v: v >= 0, "an integer >= 0")
positive_float = number_type(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
unit_float = number_type(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def no_check(args, parser) -> None:
    """The ``check`` of a subcommand whose arguments need no check beyond argparse's."""
    return None


def options_among_overrides(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Parse the options written after trailing ``KEY VALUE`` overrides, in place.

    The overrides are collected with ``nargs=REMAINDER`` (their values may look like anything), which
    also swallows every option after the first override: ``train --recipe R OPTIM.MAX_EPOCH 1
    --output-dir d`` lost its ``--output-dir``. Overrides come in pairs, so a token in a key's
    position that is one of ``parser``'s options is one: it (and its value) is parsed as if written
    before the overrides, and ``args.opts`` keeps the pairs.
    """
    tokens = list(getattr(args, "opts", None) or ())
    pairs, options, i = [], [], 0
    while i < len(tokens):
        token = tokens[i]
        name = token.split("=", 1)[0]
        action = parser._option_string_actions.get(name) if token.startswith("-") else None
        if action is None:
            pairs += tokens[i:i + 2]
            i += 2
            continue
        takes_value = action.nargs != 0 and "=" not in token
        options += tokens[i:i + 1 + takes_value]
        i += 1 + takes_value
    if options:
        parser.parse_args(options, namespace=args)
    args.opts = pairs

