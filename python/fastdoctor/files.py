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

import torch


def _fsync(path: pathlib.Path) -> None:
    """Flush a file, or a folder's entries, to disk (a rename is only as durable as what it renames)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: pathlib.Path) -> None:
    for item in folder.rglob("*"):
        if item.is_file():
            _fsync(item)
    for item in [*sorted(p for p in folder.rglob("*") if p.is_dir()), folder]:
        _fsync(item)


def recover_directory(path: pathlib.Path) -> None:
    """Finishes or undoes a commit that a kill interrupted, then removes stale staging folders.

    A commit renames `path` to a unique `.<name>.old-*` sibling, then the staging folder to `path`. Killed
    between the two, `path` is missing and the old version is intact beside it: it is put back. Staging
    folders (`.<name>.stage-*`) are never complete versions and are removed: call it only where no other
    process is writing `path` (the start of a training run)."""
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        return
    olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not path.exists():
        os.replace(olds.pop(), path)
    for stale in [*olds, *path.parent.glob(f".{path.name}.stage-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def atomic_directory(path: pathlib.Path) -> tuple[pathlib.Path, Callable[[], None]]:
    """(a temporary sibling folder to fill, commit). commit() fsyncs the staged files and swaps the folder in
    with two renames; a kill between them is undone by recover_directory, which the reader that resumes from
    `path` runs first (train does; it is not run here, where it could take another writer's staging folder
    for stale). On failure the caller removes the staging folder. Staging and old names are unique, so two
    writers never write into the same folder."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.stage-", dir=path.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; a committed folder follows the user's umask

    def commit() -> None:
        _fsync_tree(staging)
        old = None
        if path.exists():
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old)  # replaces the empty placeholder folder
        os.replace(staging, path)
        _fsync(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    return staging, commit


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged_directory(path: pathlib.Path) -> Iterator[pathlib.Path]:
    """`with staged_directory(path) as staging:` fill `staging`; a clean exit swaps it in for `path`
    (atomic_directory's renames), an exception removes it and leaves `path` as it was."""
    staging, commit = atomic_directory(path)
    try:
        yield staging
        commit()
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise _naming(error, path) from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _naming(error: OSError, path: pathlib.Path) -> OSError:
    """`error` with the file being written named (a full disk otherwise says only 'No space left on device')."""
    if str(path) in str(error):
        return error
    return type(error)(error.errno, f"writing {path}: {error.strerror or error}")


def first_non_finite(named_tensors) -> str | None:
    """The name of the first floating tensor of (name, tensor) pairs that holds NaN or inf, else None: what
    loaders and savers check before trusting weights."""
    for name, tensor in named_tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


@contextlib.contextmanager
def atomic_file(path: pathlib.Path) -> Iterator[pathlib.Path]:
    """`with atomic_file(path) as temporary:` write `temporary` (a unique sibling); a clean exit fsyncs it, gives
    it the umask's mode and renames it over `path`, an exception removes it and leaves `path` as it was."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    temporary = pathlib.Path(name)
    try:
        yield temporary
        _fsync(temporary)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise _naming(error, path) from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_json(path: pathlib.Path, payload) -> None:
    """Atomic JSON write (atomic_file)."""
    with atomic_file(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=1))


def read_format_json(folder: str | os.PathLike, name: str, expected_format: str, kind: str) -> dict:
    """<folder>/<name> as a dict, refused with a ValueError unless it is readable JSON of `expected_format`
    (`kind` names what the folder should be, e.g. 'fastdoctor doctor')."""
    folder = pathlib.Path(folder)
    try:
        meta = json.loads((folder / name).read_text())
    except FileNotFoundError:
        raise ValueError(f"{folder}: not a {kind} (no {name})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{folder}/{name}: corrupt ({error})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{folder}/{name}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != expected_format:
        raise ValueError(f"{folder}/{name}: expected format {expected_format!r}, got {meta.get('format')!r}")
    return meta


def read_jsonl_objects(path: pathlib.Path, expected: str = "a JSON object") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; a ValueError naming the file and line
    for a line that is not JSON or not an object (`expected` says what an object should hold)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}:{number}: not UTF-8 text ({error.reason} at byte {error.start})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected {expected}")
            bad = _first_non_text(record)
            if bad is not None:
                raise ValueError(f"{path}:{number}: field {bad!r} holds a lone surrogate escape (\\ud800-\\udfff "
                                 "without its pair), which is not text")
            yield number, record


def _first_non_text(value, key: str = "") -> str | None:
    """The key of the first string in a JSON value that is not valid Unicode text (a lone surrogate), else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return key or "(the value)"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for name, item in items:
        found = _first_non_text(item, f"{key}.{name}" if key else str(name))
        if found is not None:
            return found
    return None
