"""Argument types and the parser class shared by every ``fastprompt`` subcommand.

Standard library only, so the subcommand modules (``fastprompt/data/cli.py``,
``fastprompt/train/cli.py``, ...) import it without importing the command line itself.
"""
from __future__ import annotations

import argparse
import math

__all__ = ["OneLineErrorParser", "number_type", "positive_int", "nonnegative_int", "positive_float",
           "unit_float", "no_check"]


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
