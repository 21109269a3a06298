"""The one base class of errors caused by what a user gave us (a config, a path, a study, a flag).

`launch.py` and every `python -m` entry point turn a `UserError` into one line on stderr and exit status 2, with
no traceback: the message itself must name the file, study or setting and the reason. Anything else is a bug and
keeps its traceback. Subclasses also derive from the builtin they refine (ValueError, KeyError, ...), so code that
catches those keeps working.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user; `str(e)` is the whole, self-contained message."""


class ConfigError(UserError, ValueError):
    """A configuration that cannot run (launch config, model config, a setting's value); names the key and why."""


def one_line(error: BaseException) -> str:
    """`error: <message>` on one line (messages may wrap file lists or tracebacks of a worker)."""
    return "error: " + " ".join(str(error).split())
