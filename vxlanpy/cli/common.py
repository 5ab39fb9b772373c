"""What every ``vxlanpy-tunnel`` subcommand shares: one-line errors, argument types."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, NoReturn

PROG = "vxlanpy-tunnel"

__all__ = ["PROG", "UsageError", "Parser", "err", "int_in", "pair", "subcommand"]


class UsageError(Exception):
    """A bad command line: the message is printed on one line and the exit code is 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump); the caller exits with code 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def subcommand(
    sub: Any, name: str, helptext: str, func: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    """The parser of the subcommand ``name``, which ``func`` runs (the parsed flags in, the exit
    code out)."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=helptext)
    p.set_defaults(func=func)
    return p


def err(msg: str) -> None:
    """Print ``vxlanpy-tunnel: error: MSG`` on stderr."""
    print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)


def pair(what: str) -> Callable[[str], tuple[str, str]]:
    """An argument type for ``LEFT=RIGHT`` (``what`` names the form in the error)."""

    def parse(text: str) -> tuple[str, str]:
        left, s, right = text.partition("=")
        if not s or not left or not right:
            raise argparse.ArgumentTypeError(f"must look like {what}, got {text!r}")
        return left, right

    return parse


def int_in(name: str, lo: int, hi: int, words: tuple[str, ...] = ()) -> Callable[[str], Any]:
    """An argument type for an integer in ``lo..hi`` (decimal, or 0x/0o/0b), or one of
    ``words`` (returned as it is)."""

    def parse(text: str) -> Any:
        if text in words:
            return text
        try:
            v = int(text, 0)
        except ValueError:
            alt = "".join(f" or {w!r}" for w in words)
            raise argparse.ArgumentTypeError(
                f"{name} must be an integer{alt}, got {text!r}"
            ) from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{name} must be in {lo}..{hi}, got {v}")
        return v

    return parse
