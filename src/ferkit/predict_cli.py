"""``ferkit predict``: expressions of the faces in photos, as a table, JSON Lines or CSV."""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .argtypes import BACKENDS, TTA_MODES, number, whole_number
from .fileio import no_folders_left_on_failure

_SAVE_EXTENSIONS = frozenset(".jpg .jpeg .png .bmp .tif .tiff .webp".split())
_FILES_PER_BATCH = 8
_PROGRESS_MIN_FILES = 4


@dataclass
class Input:
    """One input file; ``relative`` is its name under --annotate; ``error`` set when missing."""

    name: str
    relative: Path
    error: str | None = None


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _folder_name(folder: Path) -> Path:
    """The name a folder's files are written under in --annotate: its own name (that of
    the folder it means for ``..``, never a ``..`` that would lead out of --annotate)."""
    name = folder.name
    if name == "..":
        name = folder.resolve().name
    return Path(name)


def _fixed_parts(pattern: Path) -> list[str]:
    """The folders a glob pattern starts with, up to its first part with a wildcard."""
    parts = []
    for part in pattern.parts:
        if _has_magic(part):
            break
        parts.append(part)
    return parts or ["."]


def _inside(path: Path, folder: Path | None) -> bool:
    """True when ``path`` (resolved) lies in ``folder`` (resolved), or is it."""
    return folder is not None and (path == folder or folder in path.parents)


def expand_inputs(args: list[str], skip: str | Path | None = None) -> list[Input]:
    """Files as given, folders searched recursively for images, glob patterns expanded.

    The same file named twice (``a.jpg``, ``./a.jpg``) is taken once. ``skip``: a folder
    (the --annotate output) whose files a folder search or glob leaves out where it lies
    inside the searched folder: the annotated copies of one run are not the next run's
    inputs.
    """
    from .data.faceset import IMAGE_EXTENSIONS  # numpy: not for `ferkit --help`

    out: list[Input] = []
    seen: set[str] = set()
    skipped = Path(skip).resolve() if skip is not None else None

    def add(item: Input) -> None:
        key = os.path.normpath(os.path.abspath(item.name))
        if item.error is not None or key not in seen:
            seen.add(key)
            out.append(item)

    def kept(found: Path, searched: Path) -> bool:
        # the output folder is left out only where it is inside the folder searched
        if skipped is None or not _inside(skipped, searched) or skipped == searched:
            return True
        return not _inside(found.parent.resolve(), skipped)

    for arg in args:
        p = Path(arg)
        if p.is_dir():
            top = p.resolve()
            found = sorted(
                f
                for f in p.rglob("*")
                if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file() and kept(f, top)
            )
            if not found:
                add(Input(arg, p, error=f"{arg}: no image files in this folder"))
            for f in found:
                add(Input(str(f), _folder_name(p) / f.relative_to(p)))
        elif p.exists() or not _has_magic(arg):
            add(Input(arg, Path(p.name)))
        else:
            top = Path(*_fixed_parts(p)).resolve()
            matches = sorted(
                m
                for m in glob.glob(arg, recursive=True)
                if Path(m).is_file() and kept(Path(m), top)
            )
            if not matches:
                add(Input(arg, p, error=f"{arg}: no files match"))
            for m in matches:
                add(Input(m, Path(Path(m).name)))
    return out


def add_recognizer_arguments(parser, backend: bool = False) -> None:
    """``--model``, ``--detector`` and ``--device``: what every recognising command takes;
    with ``backend``, also ``--backend torch|onnx`` (see `recognizer_from_args`)."""
    parser.add_argument(
        "--model",
        default=None,
        help="shipped weights name or checkpoint path (default: mba_cnn-fer2013)",
    )
    parser.add_argument(
        "--detector",
        default="blazeface",
        help="face detector: blazeface (default), haar, blazeface+haar (Haar where "
        "BlazeFace finds no face: more low-resolution faces, more false positives), or none "
        "(each image is already one face crop, e.g. FER2013-style faces: no detection)",
    )
    parser.add_argument(
        "--tiles",
        type=whole_number(1, 4),
        default=1,
        metavar="N",
        help="BlazeFace: also search overlapping tiles of 1/N of the image (2 finds faces "
        "down to about 1/20 of the image's longer side, e.g. in group photos; slower)",
    )
    parser.add_argument(
        "--min-score",
        type=number(0, 1, open_low=True, open_high=True),
        default=None,
        metavar="P",
        help="BlazeFace: the face probability a detection must reach (default 0.6; lower "
        "finds more blurry or small faces, and more false ones)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument(
        "--threads",
        type=whole_number(1),
        default=None,
        metavar="N",
        help="CPU threads for the classifier (default: torch's, one per core; on a busy "
        "machine 1 is often faster)",
    )
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default="none",
        help="test-time views per face: none (default), flip (the face and its mirror: about "
        "+1 point of FER2013 accuracy) or ten-crop (about +2 points, ten classifier runs "
        "per face)",
    )
    parser.add_argument(
        "--no-auto-contrast",
        dest="auto_contrast",
        action="store_false",
        help="classify dark, washed-out or flat faces as they are (default: a face of less "
        "contrast than nearly all training faces is rescaled to their typical contrast first)",
    )
    if backend:
        parser.add_argument(
            "--backend",
            choices=BACKENDS,
            default="torch",
            help="classifier runtime: torch (default) or onnx (onnxruntime on the CPU, faster "
            "there; needs ferkit[export]; the model is exported once into ferkit's cache)",
        )


def detector_from_args(args: argparse.Namespace):
    """The `FaceDetector` that ``--detector``, ``--tiles`` and ``--min-score`` describe."""
    from .faces import get_detector

    options = {}
    if args.tiles != 1 or args.min_score is not None:
        if not args.detector.startswith("blazeface"):
            raise ValueError(
                f"--tiles and --min-score apply to the BlazeFace detectors (blazeface, "
                f"blazeface+haar), not to --detector {args.detector}"
            )
        options = {"tiles": args.tiles, "min_score": args.min_score}
    return get_detector(args.detector, **options)


def recognizer_from_args(args: argparse.Namespace):
    """The `Recognizer` that `add_recognizer_arguments`'s options describe."""
    import torch

    from .recognize import Recognizer

    if args.threads is not None:
        torch.set_num_threads(args.threads)  # the onnx backend follows it too
    return Recognizer(
        model=args.model, detector=detector_from_args(args), device=args.device,
        backend=getattr(args, "backend", "torch"),  # `explain` has no --backend
        auto_contrast=args.auto_contrast, tta=args.tta,
    )


def add_parsers(subparsers) -> None:
    """Add the ``predict`` command to the ``ferkit`` command's subparsers."""
    p = subparsers.add_parser(
        "predict",
        help="recognise facial expressions in photos",
        description="Detect the faces in photos and score their expressions. Default output: "
        "a table; exit status 1 when any input failed (the others still run).",
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="image files, folders (searched recursively) or glob patterns",
    )
    p.add_argument(
        "--sample", action="store_true", help="also run on the bundled public-domain sample photo"
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument(
        "--json", action="store_true", help="one JSON object per input file (JSON Lines)"
    )
    fmt.add_argument("--csv", action="store_true", help="CSV, one row per face")
    p.add_argument(
        "--annotate",
        metavar="OUT_DIR",
        default=None,
        help="write a copy of each image with boxes and labels into OUT_DIR (same relative "
        "names; at most 4096 pixels on a side); never over an input file (also not through "
        "a link); inside a folder given as input, it is left out of that folder's search",
    )
    add_recognizer_arguments(p, backend=True)
    p.set_defaults(func=run_predict)


def stdout_to_devnull() -> None:
    """After standard output was closed by its reader: what is still buffered for it goes
    nowhere, instead of failing again when Python exits."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


class _Printer:
    """Writes lines to stdout and stderr without breaking a progress bar.

    With ``keep_going`` (other outputs are being written), standard output closed by its
    reader (``| head``) sets ``closed`` and its further lines go nowhere, instead of
    stopping the run."""

    def __init__(self, bar, keep_going: bool = False) -> None:
        self.bar = bar
        self.keep_going = keep_going
        self.closed = False

    def out(self, text: str) -> None:
        self._guarded(lambda: self._write(text, sys.stdout))

    def flush(self) -> None:
        self._guarded(sys.stdout.flush)

    def _guarded(self, write) -> None:
        if self.closed:
            return
        try:
            write()
        except BrokenPipeError:
            if not self.keep_going:
                raise  # nothing else is being written: a quiet stop (cli)
            self.closed = True
            stdout_to_devnull()

    def err(self, text: str) -> None:
        self._write(text, sys.stderr)

    def _write(self, text: str, stream) -> None:
        if self.bar is not None:
            self.bar.write(text.rstrip("\n"), file=stream)
        else:
            stream.write(text if text.endswith("\n") else text + "\n")


class _Table:
    def __init__(self, printer: _Printer, inputs: list[Input]) -> None:
        self.p = printer
        self.width = max([4] + [len(i.name) for i in inputs])
        self.p.out(
            f"{'file':<{self.width}}  {'face':>4}  {'box (x, y, w, h)':<22} "
            f"{'label':<10} {'conf':>6}  top-3"
        )

    def write(self, item: Input, faces, error: str | None, annotated: Path | None = None) -> None:
        if error is not None:
            self.p.out(f"{item.name:<{self.width}}  {'-':>4}  error: {error}")
        elif not faces:
            self.p.out(f"{item.name:<{self.width}}  {'-':>4}  no face found")
        for k, f in enumerate(faces or [], 1):
            top = sorted(f.scores.items(), key=lambda kv: -kv[1])[:3]
            box = ", ".join(str(v) for v in f.box)
            self.p.out(
                f"{item.name:<{self.width}}  {k:>4}  {box:<22} {f.label:<10} "
                f"{f.confidence:>6.1%}  " + ", ".join(f"{c} {s:.1%}" for c, s in top)
            )


class _JsonLines:
    def __init__(self, printer: _Printer, inputs: list[Input]) -> None:
        self.p = printer

    def write(self, item: Input, faces, error: str | None, annotated: Path | None = None) -> None:
        record = {"file": item.name, "faces": [f.to_dict() for f in faces or []], "error": error}
        if annotated is not None:
            record["annotated"] = str(annotated)
        self.p.out(json.dumps(record))


class _Csv:
    """One row per face; a file without faces (or that failed) gets one row without a face."""

    def __init__(self, printer: _Printer, class_names: list[str]) -> None:
        self.p = printer
        self.class_names = class_names
        self._row(
            ["file", "face", "x", "y", "w", "h", "label", "confidence", *class_names, "error"]
        )

    def _row(self, cells: list) -> None:
        line = io.StringIO()
        csv.writer(line, lineterminator="").writerow(cells)
        self.p.out(line.getvalue())

    def write(self, item: Input, faces, error: str | None, annotated: Path | None = None) -> None:
        if not faces:
            self._row(
                [item.name, "", "", "", "", "", "", "", *[""] * len(self.class_names), error or ""]
            )
        for k, f in enumerate(faces or [], 1):
            self._row(
                [
                    item.name,
                    k,
                    *f.box,
                    f.label,
                    f"{f.confidence:.6f}",
                    *(f"{f.scores[c]:.6f}" for c in self.class_names),
                    "",
                ]
            )


def _annotated_path(out_dir: Path, relative: Path, used: set[Path]) -> Path:
    suffix = relative.suffix.lower() if relative.suffix.lower() in _SAVE_EXTENSIONS else ".png"
    target = out_dir / relative.with_suffix(suffix)
    n = 1
    while target in used:
        n += 1
        target = out_dir / relative.with_name(f"{relative.stem}-{n}{suffix}")
    used.add(target)
    return target


def _file_id(path: str | Path) -> tuple[int, int] | None:
    """The (device, inode) of an existing file: the same for each of its hard links."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def annotation_targets(out_dir: Path, inputs: list[Input]) -> dict[int, Path]:
    """Where each readable input's annotated copy goes (by index into ``inputs``), checked
    before any work: the folder can be made, and no copy would replace an input file (also
    not through a link: a copy written over a hard link of an input would change it)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--annotate {out_dir}: not a folder (it is a file)")
    used: set[Path] = set()
    targets = {k: _annotated_path(out_dir, item.relative, used)
               for k, item in enumerate(inputs) if item.error is None}
    originals = {Path(item.name).resolve(): item.name for item in inputs if item.error is None}
    on_disk = {}
    for item in inputs:
        if item.error is None and (key := _file_id(item.name)) is not None:
            on_disk.setdefault(key, item.name)
    for target in targets.values():
        same = originals.get(target.resolve())
        if same is None and (key := _file_id(target)) is not None:
            same = on_disk.get(key)
        if same is not None:
            raise ValueError(
                f"--annotate {out_dir} would replace the input {same} "
                "with its annotated copy; choose a folder outside the inputs"
            )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--annotate {out_dir}: cannot create this folder ({exc})") from None
    return targets


def _recognise(recognizer, chunk: list[Input], loaded: dict, errors: dict[int, str]) -> dict:
    """The faces of each loaded image of ``chunk`` (by index), in one batch; where the batch
    fails, image by image, so that one image recognition fails on (an error naming it, in
    ``errors``) does not end the others."""
    try:
        return dict(zip(loaded, recognizer.predict_batch(list(loaded.values())), strict=True))
    except Exception:
        pass  # an image spoiled the batch: find which, one by one
    results = {}
    for k, image in loaded.items():
        try:
            results[k] = recognizer.predict(image)
        except Exception as exc:
            errors[k] = f"{chunk[k].name}: recognition failed ({type(exc).__name__}: {exc})"
    return results


def run_predict(args: argparse.Namespace) -> int:
    from .recognize import ImageError, draw_faces, load_image

    paths = list(args.paths)
    if args.sample:
        from .samples import path as sample_path

        paths.append(str(sample_path("astronaut")))
    if not paths:
        raise ValueError("no input: give image paths, folders or globs, or --sample")
    if args.annotate is not None and not args.annotate.strip():
        raise ValueError("--annotate is empty: expected a folder (use . for this one)")
    out_dir = Path(args.annotate) if args.annotate is not None else None
    inputs = expand_inputs(paths, skip=out_dir)
    # no empty --annotate folder from a run that never started
    with no_folders_left_on_failure(folders=[out_dir]):
        targets = annotation_targets(out_dir, inputs) if out_dir is not None else {}
        recognizer = recognizer_from_args(args)
    bar = None
    if len(inputs) >= _PROGRESS_MIN_FILES and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(inputs), unit="file", file=sys.stderr)
    printer = _Printer(bar, keep_going=out_dir is not None)
    if args.json:
        writer = _JsonLines(printer, inputs)
    elif args.csv:
        writer = _Csv(printer, recognizer.class_names)
    else:
        writer = _Table(printer, inputs)
    annotated = 0
    failed = 0
    for start in range(0, len(inputs), _FILES_PER_BATCH):
        chunk = inputs[start : start + _FILES_PER_BATCH]
        errors: dict[int, str] = {}
        loaded = {}
        for k, item in enumerate(chunk):
            if item.error is not None:
                errors[k] = item.error
                continue
            try:
                loaded[k] = load_image(item.name)
            except (ImageError, OSError) as exc:
                errors[k] = str(exc)
        results = _recognise(recognizer, chunk, loaded, errors)
        for k, item in enumerate(chunk):
            error = errors.get(k)
            target = targets.get(start + k)
            if error is None and target is not None:
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    draw_faces(loaded[k], results[k], recognizer.class_names).save(
                        target, quality=90
                    )
                    annotated += 1
                except OSError as exc:
                    error = f"{target}: cannot write the annotated image ({exc})"
            if error is not None:
                failed += 1
                if not isinstance(writer, _Table):  # the table shows it in its row
                    printer.err(f"ferkit: error: {error}")
            writer.write(item, None if error else results[k], error,
                         annotated=None if error or target is None else target)
            if bar is not None:
                bar.update(1)
        printer.flush()
    if bar is not None:
        bar.close()
    if printer.closed:
        printer.err("ferkit: standard output was closed early; its lines stopped there, the "
                    "annotated images went on")
    if out_dir is not None:
        printer.err(f"ferkit: {annotated} annotated image(s) written to {out_dir}")
    if failed:
        printer.err(f"ferkit: {failed} of {len(inputs)} input(s) failed")
    return 1 if failed or printer.closed else 0
