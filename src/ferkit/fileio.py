"""Writing files: never half of one for a reader, never over a folder or an input."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` to a temporary file beside `path`, then rename it onto `path`.

    The temporary name is unique per process and keeps the suffix (``np.savez`` adds
    ``.npz`` to a name without it); it is removed if `write` fails, and `path` keeps its
    old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def output_file(
    target: str | os.PathLike, option: str, keep: Iterable[str | os.PathLike] = ()
) -> Path:
    """``target`` checked, before any work, as the file an ``option`` (``--out``) writes:
    not a folder, not under a file, none of the files to ``keep`` (the inputs, another
    output); its folder is made. A ValueError naming the option says what is wrong."""
    path = Path(target)
    if path.is_dir():
        raise ValueError(f"{option} {target} is a folder; give the file to write")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {target}: {parent} is a file, not a folder")
            break
    for item in keep:
        if _same_file(path, item):
            raise ValueError(f"{option} {target} would replace {item}; choose another file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{option} {target}: cannot create its folder ({exc})") from None
    return path
