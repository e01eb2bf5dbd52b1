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


def utf8_text(text: str) -> str:
    """Text a tokenizer can take. A byte that is not UTF-8 reaches Python as a lone surrogate (the
    surrogateescape of the command line), which the tokenizer would reject later without naming the argument."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        byte = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        raise argparse.ArgumentTypeError(f"not UTF-8 text ({byte} at character {error.start})") from None
    return text
