"""Writing files: never half of one for a reader, never over a folder or an input; and the
pace of progress lines in logs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

#: Seconds between progress lines where there is no progress bar (a log file): training
#: and video print one this often.
PROGRESS_SECONDS = 60


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
    """True when ``a`` and ``b`` name one file: the same path after links are followed, or,
    when both exist, the same file on disk (another hard link to it)."""
    try:
        if Path(a).resolve() == Path(b).resolve():
            return True
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def _check_writable(path: Path, option: str, target: str | os.PathLike) -> None:
    """Open ``path`` for writing without changing it (a new file is made and removed again)."""
    try:
        if path.exists():
            if path.is_file():  # appending nothing leaves it as it is
                with open(path, "ab"):
                    pass
            elif not os.access(path, os.W_OK):  # a device or pipe: not opened here
                raise PermissionError(13, "Permission denied")
        else:
            with open(path, "xb"):
                pass
            path.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ValueError(f"{option} {target}: cannot write this file ({reason})") from None


def _refuse_file_above(path: Path, option: str, given) -> None:
    """The nearest existing folder above ``path`` must be a folder, not a file."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {given}: {parent} is a file, not a folder")
            break


def check_out_folder(out: str | os.PathLike | None, option: str = "--out") -> Path:
    """``out`` as a folder to write into, checked before any work: not empty, and neither it
    nor a folder above it an existing file."""
    if out is None or str(out).strip() == "":
        raise ValueError(f"{option} is empty: expected a folder (use . for this one)")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {out} is a file; expected a folder")
    _refuse_file_above(path, option, out)
    return path


def output_file(
    target: str | os.PathLike, option: str, keep: Iterable[str | os.PathLike] = ()
) -> Path:
    """``target`` checked, before any work, as the file an ``option`` (``--out``) writes:
    not a folder, not under a file, none of the files to ``keep`` (the inputs, another
    output, also through a hard link), writable; its folder is made (the file is not). A
    ValueError naming the option says what is wrong."""
    path = Path(target)
    if path.is_dir():
        raise ValueError(f"{option} {target} is a folder; give the file to write")
    _refuse_file_above(path, option, target)
    for item in keep:
        if _same_file(path, item):
            raise ValueError(f"{option} {target} would replace {item}; choose another file")
    with no_folders_left_on_failure(files=[path]):  # a refused output leaves none behind
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"{option} {target}: cannot create its folder ({exc})") from None
        _check_writable(path, option, target)
    return path


def _folders_on_the_way(folder: Path) -> list[Path]:
    """The folders making ``folder`` would make: its resolved path and ancestors, and the
    ancestors as written up to a first ``..`` (``new/../kept`` makes ``new``; through a
    ``..`` a path names another folder than it seems to: ``new/..`` is not new)."""
    real = Path(os.path.realpath(folder))
    parts = folder.absolute().parts
    written = []
    for k in range(1, len(parts) + 1):
        if parts[k - 1] == "..":
            break
        written.append(Path(*parts[:k]))
    return [real, *real.parents, *written]


@contextlib.contextmanager
def no_folders_left_on_failure(files: Iterable = (), folders: Iterable = ()):
    """Folders the output ``files`` (their folders) and ``folders`` (themselves too) need and
    that are not there when the block starts: removed again, where still empty, if the block
    raises; a run that stops before its work (a model that cannot load, a refused option)
    leaves no empty folders behind. None or "-" (standard output) entries are skipped."""
    wanted = [Path(f).parent for f in files if f not in (None, "", "-")]
    wanted += [Path(f) for f in folders if f not in (None, "", "-")]
    new = {q for w in wanted for q in _folders_on_the_way(w) if not q.exists()}
    try:
        yield
    except BaseException:
        for folder in sorted(new, key=lambda q: -len(q.absolute().parts)):  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
