"""Folders the project writes whole (a dataset, an erased copy of one): made aside, swapped in atomically,
and never put in the place of anything the project did not make.

A folder the project made carries a marker file. Replacing a folder is allowed only when it is absent or
carries the marker, and only once the new content is complete: the new folder is written beside the old
(`staging`), then renamed over it (`publish`). A kill at any moment leaves either the old folder or the new
one, never a mix or nothing; a leftover staging folder is the only litter, and the next run of the same
output removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

MARKER = ".purchase-crowd"
# a name that becomes one folder under the data directory: no separator, no `..`, no quote, no leading dot
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


class OutputError(ValueError):
    """An output that would replace, or a name that would reach, something the project does not own."""


def checked_name(name: str, what: str = "name") -> str:
    """`name` when it is safe as one folder name (letters, digits, `_`, `-`, `.`; not `..`), else an error."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise OutputError(f"{what} {name!r} is not a plain name: use letters, digits, '_', '-' and '.' "
                          f"(no path separator, no '..', no quote, at most 100 characters)")
    return name


# what a dataset folder holds (ml.loaders.load, ml.synth.generate): one made before the marker existed, with
# a manifest and nothing else, is recognised as the project's
DATASET_ENTRIES = frozenset({"events", "items.parquet", "item_subset.parquet", "rejects.parquet", "manifest.json",
                             "oracle", "oracle_tags", "truth"})


# what a model bundle holds (ml.train.bundle): one made before the marker existed is recognised by them
BUNDLE_ENTRIES = frozenset({"config.json", "weights.pt", "feature_map.json", "lgbm", "gbdt.json"})


def is_ours(path: Path) -> bool:
    path = Path(path)
    if (path / MARKER).is_file():
        return True
    entries = {p.name for p in path.iterdir()} if path.is_dir() else set()
    return (("manifest.json" in entries and "events" in entries and entries <= DATASET_ENTRIES)
            or ("config.json" in entries and entries <= BUNDLE_ENTRIES))


def check_replaceable(out: Path, inputs: list[Path] = ()) -> None:
    """Fail, before any work, when `out` exists and is not a folder the project made, or when an input lies
    inside it (replacing `out` would delete the input)."""
    out = Path(out).resolve()
    if out.exists() and not (out.is_dir() and is_ours(out)):
        raise OutputError(f"refusing to replace {out}: it exists and is not a folder Purchase Crowd made (no "
                          f"{MARKER} marker in it); choose another output folder, or move it away yourself")
    for p in inputs:
        p = Path(p).resolve()
        if p == out or out in p.parents:
            raise OutputError(f"refusing to write into {out}: the input {p} is inside it")


def staging(out: Path, inputs: list[Path] = ()) -> Path:
    """A new, empty folder beside `out` (marked as the project's) to write the new content into."""
    out = Path(out).resolve()
    check_replaceable(out, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):  # a killed run's leftovers of this output
        if is_ours(stale):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return mark(tmp)


def mark(folder: Path) -> Path:
    """Mark a folder as the project's: one it may replace later."""
    (Path(folder) / MARKER).write_text("made by Purchase Crowd: the project may replace this folder\n")
    return Path(folder)


def publish(tmp: Path, out: Path) -> Path:
    """Swap the complete `tmp` in at `out`: the old folder is renamed away first, then removed."""
    out = Path(out).resolve()
    check_replaceable(out)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def check_writable(folder: Path, doing: str) -> None:
    """Fail before `doing` (hours of training, say) when its outputs could not be written at the end."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{uuid.uuid4().hex[:8]}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"{folder}: cannot write there ({e.strerror or e}): not {doing}") from None


@contextlib.contextmanager
def replacing(out: Path, inputs: list[Path] = ()) -> Iterator[Path]:
    """`with replacing(out) as tmp:` write into tmp; swapped in at out when the block ends, discarded when it
    raises (out then stays as it was)."""
    tmp = staging(out, inputs)
    try:
        yield tmp
    except BaseException:
        discard(tmp)
        raise
    publish(tmp, out)


def discard(tmp: Path) -> None:
    """Remove a staging folder whose content was not published (a failed or empty run)."""
    if is_ours(tmp):
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomically(path: Path, text: str, signature: str) -> Path:
    """A text file the project owns (it contains `signature`) written beside and swapped in; an existing file
    without the signature is someone else's and is never replaced."""
    path = Path(path)
    if path.exists() and (not path.is_file() or signature not in path.read_text(errors="replace")):
        raise OutputError(f"refusing to replace {path}: it exists and is not a file Purchase Crowd wrote; "
                          "choose another output path, or move it away yourself")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    partial.write_text(text)
    os.replace(partial, path)
    return path


def check_table_replaceable(path: Path, columns: Sequence[str], earlier: Sequence[Sequence[str]] = ()) -> None:
    """A table file at a path the user named (`crowd score --out`, `crowd evaluate --per-target`) is replaced
    only when it is an earlier output of the same kind: a parquet or CSV file with exactly these columns, or the
    columns an earlier version wrote (`earlier`). Both overwrote any file of that name (a user's notes.csv became
    a table of metrics)."""
    path = Path(path)
    if path.exists() and not (path.is_file() and _table_columns(path) in [list(c) for c in (columns, *earlier)]):
        raise OutputError(f"refusing to replace {path}: it exists and is not a table Purchase Crowd wrote (with "
                          "these columns); choose another output path, or move it away yourself")


def _table_columns(path: Path) -> list[str] | None:
    """The columns of a parquet file, or the header of a CSV; None when it is neither."""
    try:
        if path.suffix == ".csv":
            with open(path, encoding="utf-8") as f:
                return f.readline().rstrip("\r\n").split(",")
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    except (OSError, UnicodeDecodeError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
        return None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on a file of the data directory, shared by every local process and compose service."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
