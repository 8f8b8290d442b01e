"""Paths named by dataset lists stay inside the folder they belong to.

A dataset downloaded from elsewhere must not make the harness read any file the user can read: a
listed path that leaves its folder by its name (``../x.jpg``, an absolute path) is always an error,
one that leaves it through a symlink unless the user opted in (``follow_symlinks``)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from benchmark.errors import DatasetError


def inside_dataset(root: Path, relative: str, where: str, follow_symlinks: bool = False, *,
                   option: bool = True) -> Path:
    """``root/relative``, refused (naming ``where``, e.g. ``list.csv:12``) when it leaves ``root``:
    by its name (``..``, an absolute path) always, through a symlink unless ``follow_symlinks``
    (``option``: the dataset has that option, which the message then names)."""
    path = root / relative
    resolved_root = _resolved(root)
    lexical = Path(os.path.normpath(root.absolute() / relative))
    if not _within(lexical, Path(os.path.normpath(root.absolute()))):
        raise DatasetError(f"{where}: path {relative!r} leaves the dataset folder {root} (it names {lexical}); "
                           f"paths must be relative to {root} and stay inside it")
    resolved = path.resolve()
    if not follow_symlinks and not _within(resolved, resolved_root):
        raise DatasetError(f"{where}: path {relative!r} is a symlink (or lies under one) pointing outside the "
                           f"dataset folder {root}, to {resolved}; copy the file into the dataset"
                           + (", or set the dataset option follow_symlinks: true if you trust it" if option else ""))
    return path


@lru_cache(maxsize=16)
def _resolved(root: Path) -> Path:
    return root.resolve()


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def read_list_text(list_file: Path, expected: str) -> str:
    """The text of a list file; one that cannot be read or is not UTF-8 text (a binary file,
    another encoding) is a DatasetError naming it and what it should hold (``expected``)."""
    try:
        data = list_file.read_bytes()
    except OSError as exc:
        raise DatasetError(f"list file {list_file} cannot be read ({exc.strerror}); check its permissions") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"list file {list_file} is not UTF-8 text (byte {exc.start}); expected {expected}, "
                           f"saved as UTF-8") from None
    if "\0" in text:
        raise DatasetError(f"list file {list_file} holds NUL bytes (a binary file?); expected {expected}")
    return text
