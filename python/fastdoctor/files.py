"""Atomic writes: a reader never sees a half-written doctor, checkpoint or JSON file, and a crash leaves the
previous version intact."""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterator


def atomic_directory(path: pathlib.Path) -> tuple[pathlib.Path, Callable[[], None]]:
    """(a temporary sibling folder to fill, commit). commit() swaps the folder in with renames; on failure
    the caller removes the staging folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))

    def commit() -> None:
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(staging, path)
        shutil.rmtree(old, ignore_errors=True)

    return staging, commit


@contextlib.contextmanager
def staged_directory(path: pathlib.Path) -> Iterator[pathlib.Path]:
    """`with staged_directory(path) as staging:` fill `staging`; a clean exit swaps it in for `path`
    (atomic_directory's renames), an exception removes it and leaves `path` as it was."""
    staging, commit = atomic_directory(path)
    try:
        yield staging
        commit()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_json(path: pathlib.Path, payload) -> None:
    """Atomic JSON write (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=1))
    os.replace(temporary, path)


def read_format_json(folder: str | os.PathLike, name: str, expected_format: str, kind: str) -> dict:
    """<folder>/<name> as a dict, refused with a ValueError unless it is readable JSON of `expected_format`
    (`kind` names what the folder should be, e.g. 'fastdoctor doctor')."""
    folder = pathlib.Path(folder)
    try:
        meta = json.loads((folder / name).read_text())
    except FileNotFoundError:
        raise ValueError(f"{folder}: not a {kind} (no {name})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{folder}/{name}: corrupt ({error})") from None
    if meta.get("format") != expected_format:
        raise ValueError(f"{folder}/{name}: expected format {expected_format!r}, got {meta.get('format')!r}")
    return meta


def read_jsonl_objects(path: pathlib.Path, expected: str = "a JSON object") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; a ValueError naming the file and line
    for a line that is not JSON or not an object (`expected` says what an object should hold)."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected {expected}")
            yield number, record
