"""argparse types shared by the commands: bad values fail at parsing, before any model loads or any work
starts, with argparse's usual `argument --x: ...` message."""
from __future__ import annotations

import argparse
import os
import pathlib


def positive_int(text: str) -> int:
    """An int >= 1 (a limit of 0 or -3 is a mistake, not 'all')."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value} (leave it out for all)")
    return value


def writable_path(text: str) -> str:
    """A file or folder this process can create or replace: checked now, not after an hour of training."""
    path = pathlib.Path(text).expanduser().absolute()
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text}: exists and is not writable")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: cannot be created ({parent} is not a writable folder)")
    return text
