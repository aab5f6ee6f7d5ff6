"""Expressions in videos and live from a camera: ``ferkit video`` and ``ferkit webcam``.

`process_video` streams the frames of a video file (or a camera) through a `Recognizer`
one at a time, so memory stays bounded whatever the video's length; `IouTracker` gives
each face an id that stays the same while the face moves (a new id when a face matches no
live track; a track expires after a few analysed frames without a match) and can smooth
each track's scores over time.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import operator
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data.faceset import IMAGE_EXTENSIONS
from .faces import _import_cv2
from .fileio import PROGRESS_SECONDS, no_folders_left_on_failure, output_file
from .predict_cli import recognizer_from_args, stdout_to_devnull
from .recognize import _PALETTE, Face, Recognizer

#: Frames per second written when a video does not say its own.
DEFAULT_FPS = 25.0
_WRITER_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG"}
_WRITER_SUFFIXES = ".mp4, .mov, .m4v or .avi"


def _quiet_ffmpeg() -> None:
    """Silence FFmpeg's own log lines (e.g. "moov atom not found"): ferkit says what went
    wrong itself. OpenCV reads this setting once, when it first opens a video, so this runs
    before each capture or writer; a setting of the user's own is kept."""
    if not (os.environ.get("OPENCV_FFMPEG_LOGLEVEL") or os.environ.get("OPENCV_FFMPEG_DEBUG")):
        os.environ["OPENCV_FFMPEG_LOGLEVEL"] = "-8"  # AV_LOG_QUIET


@dataclass
class TrackedFace(Face):
    """A `Face` in a video with ``track_id``: the same number while the same face is tracked.

    With smoothing, ``scores``, ``label`` and ``confidence`` are the smoothed values.
    """

    track_id: int = 0

    def to_dict(self) -> dict:
        return {"id": int(self.track_id), **super().to_dict()}


@dataclass
class FrameResult:
    """One frame of a video: its index (from 0), its time in seconds, and its faces.

    ``time_s`` is counted from the first frame, by the video's own timestamps (right for a
    variable frame rate too); where the decoder gives none that make sense, index / fps.

    ``processed`` is False on the frames between two analysed ones (``every`` > 1): their
    ``faces`` are those of the last analysed frame, carried over.
    """

    frame_index: int
    time_s: float
    faces: list[TrackedFace]
    processed: bool = True


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class _Track:
    track_id: int
    box: list[int]
    scores: np.ndarray | None = None
    missed: int = 0


@dataclass
class IouTracker:
    """Stable face ids across frames by box overlap.

    Each `update` matches the new faces to the live tracks greedily, highest IoU first
    (pairs below ``iou_threshold`` never match). A face left unmatched starts a new track
    with the next id; a track left unmatched for more than ``max_missed`` consecutive
    updates is dropped. ``smoothing`` (alpha in [0, 1)) blends each track's scores
    exponentially: ``s = alpha * s_previous + (1 - alpha) * scores``; 0 keeps the raw scores.
    """

    iou_threshold: float = 0.3
    max_missed: int = 5
    smoothing: float = 0.0
    tracks: list[_Track] = field(default_factory=list)
    next_id: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")
        if not 0.0 <= self.iou_threshold <= 1.0:  # NaN too: no silent new id per frame
            raise ValueError(f"iou_threshold must be in [0, 1], got {self.iou_threshold}")
        if self.max_missed < 0:
            raise ValueError(f"max_missed must be >= 0, got {self.max_missed}")

    def update(self, faces: Sequence[Face]) -> list[TrackedFace]:
        """The faces of the next analysed frame, in their order, with track ids."""
        pairs = sorted(
            (
                (box_iou(t.box, f.box), ti, fi)
                for ti, t in enumerate(self.tracks)
                for fi, f in enumerate(faces)
            ),
            key=lambda p: -p[0],
        )
        track_of: dict[int, _Track] = {}
        used: set[int] = set()
        for overlap, ti, fi in pairs:
            if overlap < self.iou_threshold:
                break
            if ti in used or fi in track_of:
                continue
            used.add(ti)
            track_of[fi] = self.tracks[ti]
        for ti, t in enumerate(self.tracks):
            if ti not in used:
                t.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        out = []
        for fi, face in enumerate(faces):
            track = track_of.get(fi)
            if track is None:
                track = _Track(self.next_id, list(face.box))
                self.next_id += 1
                self.tracks.append(track)
            out.append(self._tracked(track, face))
        return out

    def _tracked(self, track: _Track, face: Face) -> TrackedFace:
        names = list(face.scores)
        raw = np.array([face.scores[c] for c in names], dtype=np.float64)
        if track.scores is None or self.smoothing == 0.0 or len(track.scores) != len(raw):
            scores = raw
        else:
            scores = self.smoothing * track.scores + (1.0 - self.smoothing) * raw
        track.box, track.scores, track.missed = list(face.box), scores, 0
        best = int(np.argmax(scores))
        return TrackedFace(
            box=list(face.box),
            landmarks=face.landmarks,
            scores={c: float(s) for c, s in zip(names, scores, strict=True)},
            label=names[best],
            confidence=float(scores[best]),
            detection_score=face.detection_score,
            track_id=track.track_id,
        )


def _usable_fps(fps: float) -> float | None:
    return float(fps) if fps and math.isfinite(fps) and 0 < fps <= 1000 else None


class VideoStream:
    """The iterator `process_video` returns; also tells the video's size and frame rate.

    ``fps`` is None when the video does not say it (or for a camera, where times are wall
    clock); ``frame_count`` is None when unknown. Iterate once; `close` (or leaving a
    ``with`` block, or reaching the end) releases the video.
    """

    def __init__(
        self,
        source: str | os.PathLike | int,
        recognizer: Recognizer | None,
        every: int = 1,
        smoothing: float = 0.0,
        on_frame: Callable[[np.ndarray, FrameResult], None] | None = None,
        iou_threshold: float = 0.3,
        max_missed: int = 5,
    ) -> None:
        try:
            every = operator.index(every)
        except TypeError:
            raise ValueError(f"every must be a whole number >= 1, got {every!r}") from None
        if every < 1:
            raise ValueError(f"every must be a whole number >= 1, got {every!r}")
        self.tracker = IouTracker(iou_threshold, max_missed, smoothing)
        self.recognizer = recognizer
        self.every = every
        self.on_frame = on_frame
        cv2 = _import_cv2()
        _quiet_ffmpeg()
        self.camera = isinstance(source, int) and not isinstance(source, bool)
        if self.camera:
            self.name = f"camera {source}"
            cap = cv2.VideoCapture(source)
            if not cap.isOpened():
                cap.release()
                raise ValueError(
                    f"{self.name}: cannot open this camera (is one connected, and free? "
                    "try another --camera number)"
                )
        else:
            self.name = os.fspath(source)
            path = Path(source)
            if not path.exists():
                raise FileNotFoundError(f"{self.name}: no such file")
            if path.is_dir():
                raise ValueError(f"{self.name}: is a folder, not a video file")
            cap = cv2.VideoCapture(self.name)
            if not cap.isOpened():
                cap.release()
                raise ValueError(f"{self.name}: cannot read this video (unknown format or corrupt)")
        self._cap = cap
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            what = "no frame from this camera" if self.camera else "no frame could be decoded"
            raise ValueError(f"{self.name}: {what} (corrupt or empty video?)")
        self._first: np.ndarray | None = first
        self.height, self.width = first.shape[:2]
        self.fps = None if self.camera else _usable_fps(cap.get(cv2.CAP_PROP_FPS))
        # the decoder's time of the first frame: times count from it while they make sense
        origin = float(cap.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
        self._origin = origin if math.isfinite(origin) and origin >= 0 else None
        self._anchor = (0, 0.0)  # the last frame timed by the decoder: (index, seconds)
        self._first_time = None if self.camera else self._time(0, 0.0)
        count = 0.0 if self.camera else float(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = int(count) if math.isfinite(count) and count >= 1 else None
        self.frames_read = 0
        self.frames_processed = 0
        self._gen = self._run()

    def __iter__(self) -> Iterator[FrameResult]:
        return self

    def __next__(self) -> FrameResult:
        if self.recognizer is None:
            raise ValueError(f"{self.name}: no recognizer: give one to process_video, or set "
                             "the stream's .recognizer before reading frames")
        return next(self._gen)

    def __enter__(self) -> VideoStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._gen.close()
        self._first = None
        self._cap.release()

    def _time(self, index: int, start: float) -> float:
        """The time of frame ``index``, the frame just read (wall clock for a camera)."""
        if self.camera:
            return time.monotonic() - start
        cv2 = _import_cv2()
        decoder = float(self._cap.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
        if self.fps is None:
            return max(0.0, decoder)
        nominal = index / self.fps
        last_index, last_time = self._anchor
        if self._origin is not None:
            when = round(decoder - self._origin, 6)  # to the microsecond: no float noise
            if math.isfinite(when) and (when > last_time or index == last_index == 0):
                if abs(when - nominal) < 0.01 / self.fps:
                    when = nominal  # a constant frame rate: the exact multiple
                self._anchor = (index, when)
                return when
            self._origin = None  # not increasing: not trusted from here on
        return (last_time - last_index / self.fps) + index / self.fps

    def _run(self) -> Iterator[FrameResult]:
        start = time.monotonic()
        faces: list[TrackedFace] = []
        index = 0
        try:
            while True:
                process = index % self.every == 0
                if index == 0:
                    frame, self._first = self._first, None
                    when = self._time(0, start) if self._first_time is None else self._first_time
                else:
                    if process or self.on_frame is not None:
                        ok, frame = self._cap.read()
                        if not ok or frame is None:
                            break
                    else:  # nothing needs these pixels: skip the colour conversion
                        if not self._cap.grab():
                            break
                        frame = None
                    when = self._time(index, start)
                self.frames_read += 1
                if process:
                    faces = self.tracker.update(self.recognizer.predict(frame, color="bgr"))
                    self.frames_processed += 1
                result = FrameResult(index, when, faces, process)
                if self.on_frame is not None:
                    self.on_frame(frame, result)
                frame = None
                yield result
                index += 1
        finally:
            self._cap.release()


def process_video(
    source: str | os.PathLike | int,
    recognizer: Recognizer | None,
    every: int = 1,
    smoothing: float = 0.0,
    on_frame: Callable[[np.ndarray, FrameResult], None] | None = None,
    *,
    iou_threshold: float = 0.3,
    max_missed: int = 5,
) -> VideoStream:
    """Recognise and track the faces of a video, frame by frame: an iterator of `FrameResult`.

    ``source``: a video file path, or a camera number (an int). The video is opened and its
    first frame decoded at once, so a missing file raises FileNotFoundError and an
    unreadable or corrupt one ValueError (naming it) from this call; frames are then read
    one at a time as the iterator advances. ``every``: run recognition on every Nth frame
    only; the frames between carry the last results (same boxes and ids,
    ``processed=False``). ``smoothing``: exponential smoothing of each track's scores,
    alpha in [0, 1) (see `IouTracker`). ``on_frame(frame, result)``: called for every
    frame before its result is yielded, with the frame as OpenCV decodes it (uint8
    H x W x 3 BGR; draw on it or write it, but do not keep it). A track expires after
    ``max_missed`` analysed frames without a match; ``iou_threshold`` is the least box
    overlap that continues a track. FFmpeg's own log lines are silenced (the environment
    variable ``OPENCV_FFMPEG_LOGLEVEL`` is set to -8 unless it is set already).
    ``recognizer`` may be None while the video is opened (a camera, say, opened before a
    model loads); set the stream's ``recognizer`` before reading frames.
    """
    return VideoStream(source, recognizer, every, smoothing, on_frame, iou_threshold, max_missed)


def _bgr(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    return rgb[2], rgb[1], rgb[0]


def draw_tracked(
    frame: np.ndarray, faces: Sequence[TrackedFace], class_names: Sequence[str] = ()
) -> np.ndarray:
    """Draw each face's box and "id label 87%" on a BGR frame, in place; returns it.

    Colours follow the label as in `ferkit.recognize.draw_faces`.
    """
    cv2 = _import_cv2()
    h, w = frame.shape[:2]
    line = max(1, round(max(h, w) / 400))
    names = list(class_names)
    for face in faces:
        x, y, bw, bh = (int(v) for v in face.box)
        idx = names.index(face.label) if face.label in names else 0
        colour = _bgr(_PALETTE[idx % len(_PALETTE)])
        cv2.rectangle(frame, (x, y), (x + bw, y + bh), colour, line)
        text = f"{face.track_id} {face.label} {face.confidence:.0%}"
        scale = float(np.clip(bw / 220.0, 0.35, 2.0))
        thick = max(1, round(scale * 1.5))
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        pad = max(2, th // 4)
        top = y - th - base - 2 * pad
        if top < 0:
            top = y
        cv2.rectangle(frame, (x, top), (x + tw + 2 * pad, top + th + base + 2 * pad), colour, -1)
        cv2.putText(
            frame,
            text,
            (x + pad, top + pad + th),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (0, 0, 0),
            thick,
            cv2.LINE_AA,
        )
    return frame


# ---- the commands ----


def _codec_for(path: Path) -> str:
    codec = _WRITER_CODECS.get(path.suffix.lower())
    if codec is None:
        raise ValueError(
            f"--out {path}: cannot tell the video format from this name; use {_WRITER_SUFFIXES}"
        )
    return codec


def _out_file(out: str, keep: Sequence[str]) -> Path:
    """``--out`` checked before any work: a video name, not a folder, writable, no input."""
    path = Path(out)
    if not path.is_dir():  # a folder: output_file says so
        _codec_for(path)
    return output_file(path, "--out", keep)


def _sides(width_odd: bool, height_odd: bool) -> str:
    return " and ".join(s for s, odd in (("column", width_odd), ("row", height_odd)) if odd)


def _writer_for(path: Path, fps: float, size: tuple[int, int]):
    """An open ``cv2.VideoWriter`` for frames of ``size`` (width, height), and a note for
    the summary when the video it writes is smaller ("" when it is not).

    FFmpeg's encoders need an even width and height (OpenCV leaves out the last pixel column
    or row); for .avi, OpenCV's own MJPEG writer keeps odd sizes, at a whole-number frame
    rate (it has no other).
    """
    cv2 = _import_cv2()
    _quiet_ffmpeg()
    codec = _codec_for(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fourcc = cv2.VideoWriter_fourcc(*codec)
    width, height = size
    odd = (width % 2 == 1, height % 2 == 1)
    note = ""
    if any(odd) and path.suffix.lower() == ".avi" and fps >= 1 and float(fps).is_integer():
        writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, fourcc, fps, size)
    else:
        writer = cv2.VideoWriter(str(path), fourcc, fps, size)
        if any(odd):
            why = (
                f".avi keeps an odd width or height only at a whole-number frame rate, and "
                f"this video's is {fps:g}"
                if path.suffix.lower() == ".avi"
                else f"{path.suffix} needs an even width and height; .avi keeps odd sizes"
            )
            sides = _sides(*odd)
            verb = "are" if " and " in sides else "is"
            note = (
                f" ({width - odd[0]} x {height - odd[1]}, not {width} x {height}: the last "
                f"pixel {sides} {verb} left out, as {why})"
            )
    if not writer.isOpened():
        writer.release()
        raise ValueError(f"--out {path}: OpenCV cannot write a {codec} video here")
    return writer, note


class _CsvOut:
    """The ``--csv`` table. On standard output beside a progress bar (``bar``), rows go
    through the bar, which clears its line first: the two never share a terminal line."""

    def __init__(self, target: str, class_names: list[str], bar=None) -> None:
        if target == "-":
            self.file, self.owned = sys.stdout, False
        else:
            try:
                self.file = open(target, "w", newline="", encoding="utf-8")
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise ValueError(f"--csv {target}: cannot write this file ({reason})") from None
            self.owned = True
        self.bar = None if self.owned else bar
        self.class_names = class_names
        self._emit(
            [
                ["frame", "time_s", "face_id", "x", "y", "w", "h", "label", "confidence"]
                + class_names
            ]
        )

    def _emit(self, rows: list[list]) -> None:
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        if self.bar is not None:
            self.bar.write(text.getvalue().removesuffix("\n"), file=self.file)
        else:
            self.file.write(text.getvalue())

    def write(self, result: FrameResult) -> None:
        head = [result.frame_index, f"{result.time_s:.3f}"]
        if not result.faces:
            self._emit([head + [""] * (7 + len(self.class_names))])
            return
        self._emit(
            [
                head
                + [f.track_id, *f.box, f.label, f"{f.confidence:.6f}"]
                + [f"{f.scores[c]:.6f}" for c in self.class_names]
                for f in result.faces
            ]
        )

    def close(self) -> None:
        if self.owned:
            self.file.close()
        else:
            self.file.flush()


def _progress_line(name: str, done: int, total: int | None, elapsed: float) -> str:
    rate = done / max(elapsed, 1e-9)
    if total is None or done >= total:
        return f"{name}: {done} frames, {rate:.1f} frames/s"
    left = (total - done) / max(rate, 1e-9)
    return (
        f"{name}: frame {done} of {total} ({done / total:.0%}), {rate:.1f} frames/s, "
        f"about {left / 60:.1f} min left"
    )


def run_video(args: argparse.Namespace) -> int:
    for option, value in (("--out", args.out), ("--csv", args.csv)):
        if value is not None and not value.strip():  # not silently nothing written
            raise ValueError(f"{option} is empty: give the file to write")
    if Path(args.input).suffix.lower() in IMAGE_EXTENSIONS - {".gif", ".webp"}:
        # OpenCV would read a photo as a one-frame video (GIF and WebP may be animations)
        raise ValueError(f"{args.input}: a photo, not a video; use `ferkit predict "
                         f"{args.input}` for photos")
    writer = None
    names: list[str] = []

    def annotate(frame: np.ndarray, result: FrameResult) -> None:
        writer.write(draw_tracked(frame, result.faces, names))

    # the video is opened (a missing or unreadable one is said at once) before the model
    # loads; the recognizer is set once it has
    stream = process_video(
        args.input,
        None,
        every=args.every,
        smoothing=args.smooth,
        on_frame=annotate if args.out else None,
    )
    table = None
    bar = None
    note = ""
    # a run that stops before it starts (e.g. a model that cannot load) leaves no empty
    # folders of its outputs behind
    with no_folders_left_on_failure(files=[args.out, args.csv]):
        try:
            # every output checked (and found writable) before any is made
            out = _out_file(args.out, [args.input]) if args.out else None
            csv_path = None
            if args.csv and args.csv != "-":
                keep = [args.input, *([args.out] if args.out else [])]
                csv_path = output_file(args.csv, "--csv", keep)
            stream.recognizer = recognizer_from_args(args)
            names = stream.recognizer.class_names
            made = [p for p in (out, csv_path) if p is not None and not p.exists()]
            try:
                if out is not None:
                    writer, note = _writer_for(
                        out, stream.fps or DEFAULT_FPS, (stream.width, stream.height)
                    )
                if sys.stderr.isatty():
                    from tqdm import tqdm

                    bar = tqdm(total=stream.frame_count, unit="frame", file=sys.stderr)
                if args.csv:
                    table = _CsvOut(args.csv, names, bar if sys.stdout.isatty() else None)
            except BaseException:
                if writer is not None:
                    writer.release()
                for p in made:  # no empty stub of a run that never started
                    p.unlink(missing_ok=True)
                raise
        except BaseException:
            stream.close()
            if bar is not None:
                bar.close()
            raise
    faces_seen = 0
    ids: set[int] = set()
    closed_at = None  # frames written when standard output was closed early
    start = last_note = time.monotonic()
    try:
        for result in stream:
            if result.processed:
                faces_seen += len(result.faces)
                ids.update(f.track_id for f in result.faces)
                if table is not None:
                    try:
                        table.write(result)
                    except BrokenPipeError:
                        if writer is None:
                            raise  # nothing else is being written: a quiet stop (cli)
                        closed_at = stream.frames_read
                        break
            if bar is not None:
                bar.update(1)
            elif time.monotonic() - last_note >= PROGRESS_SECONDS:
                # no progress bar (a log file): a line now and then instead
                last_note = time.monotonic()
                print(
                    _progress_line(
                        args.input, stream.frames_read, stream.frame_count, last_note - start
                    ),
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        stream.close()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.release()
        if table is not None and closed_at is None:
            table.close()
    if closed_at is not None:
        stdout_to_devnull()
        of = f" of {stream.frame_count}" if stream.frame_count is not None else ""
        print(
            f"ferkit: standard output was closed early; the annotated video {args.out} holds "
            f"only the first {closed_at}{of} frames",
            file=sys.stderr,
        )
        return 1
    elapsed = max(time.monotonic() - start, 1e-9)
    summary = sys.stderr if args.csv == "-" else sys.stdout
    frames = stream.frames_read
    expected = (
        f" (the video says {stream.frame_count})"
        if stream.frame_count is not None and stream.frame_count != frames
        else ""
    )
    print(
        f"{args.input}: {frames} frames{expected}, {stream.frames_processed} analysed, "
        f"{faces_seen} faces seen, {len(ids)} distinct ids, {frames / elapsed:.1f} frames/s",
        file=summary,
    )
    if args.out:
        print(f"annotated video written to {args.out}{note}", file=summary)
    if args.csv and args.csv != "-":
        print(f"CSV written to {args.csv}", file=summary)
    return 0


def _cv2_has_gui(cv2) -> bool:
    """False when this OpenCV was built without a GUI backend (opencv-python-headless)."""
    try:
        info = cv2.getBuildInformation()
    except Exception:
        return True
    for line in info.splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() == "GUI":
            return value.strip().upper() not in ("NONE", "NO", "")
    return True


def display_problem() -> str | None:
    """Why no window can be shown here, or None when it seems possible."""
    cv2 = _import_cv2()
    if not _cv2_has_gui(cv2):
        return (
            f"this OpenCV ({cv2.__version__}) has no GUI support (opencv-python-headless, "
            "which ferkit installs, never has), so it cannot open a window; for one: pip "
            "uninstall -y opencv-python-headless && pip install 'opencv-python>=4.8,<5'"
        )
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return "no display is available (neither DISPLAY nor WAYLAND_DISPLAY is set)"
    return None


def run_webcam(args: argparse.Namespace) -> int:
    problem = display_problem()
    if problem is not None:
        print(
            f"ferkit: error: ferkit webcam shows the camera in a window, but {problem}.\n"
            "Without a window: record a clip and run `ferkit video CLIP.mp4 --out "
            "annotated.mp4 --csv frames.csv`, or serve recognition over the network with "
            "`ferkit serve`.",
            file=sys.stderr,
        )
        return 2
    cv2 = _import_cv2()
    window = "ferkit webcam (q to quit)"
    names: list[str] = []

    def show(frame: np.ndarray, result: FrameResult) -> None:
        cv2.imshow(window, draw_tracked(frame, result.faces, names))

    # the camera is opened (none there is said at once) before the model loads
    try:
        stream = process_video(
            args.camera, None, every=args.every, smoothing=args.smooth, on_frame=show
        )
    except ValueError as exc:
        print(f"ferkit: error: {exc}", file=sys.stderr)
        return 2
    frames = 0
    try:
        stream.recognizer = recognizer_from_args(args)
        names = stream.recognizer.class_names
        cv2.namedWindow(window, cv2.WINDOW_NORMAL)
        for _ in stream:
            frames += 1
            key = cv2.waitKey(1) & 0xFF
            if key in (ord("q"), ord("Q"), 27):
                break
            if cv2.getWindowProperty(window, cv2.WND_PROP_VISIBLE) < 1:
                break  # the window was closed
        else:
            print(f"ferkit: camera {args.camera} stopped sending frames", file=sys.stderr)
    except cv2.error as exc:  # e.g. a GUI backend that cannot reach the display
        reason = (str(exc).strip().splitlines() or ["unknown"])[-1]
        print(
            f"ferkit: error: ferkit webcam cannot show its window here (OpenCV: {reason}); "
            "without a window: record a clip and run `ferkit video CLIP.mp4 --out "
            "annotated.mp4`, or use `ferkit serve`",
            file=sys.stderr,
        )
        return 2
    finally:
        stream.close()
        with contextlib.suppress(cv2.error):
            cv2.destroyAllWindows()
    print(f"{frames} frames shown")
    return 0
