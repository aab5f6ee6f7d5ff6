"""Video recognition: streaming, the IoU tracker, smoothing, ``ferkit video`` and ``webcam``."""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ferkit import samples
from ferkit.fileio import output_file
from ferkit.recognize import Face, Recognizer
from ferkit.video import (
    FrameResult,
    IouTracker,
    TrackedFace,
    box_iou,
    display_problem,
    draw_tracked,
    process_video,
)
from ferkit.video_cli import add_parsers

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
W, H, FPS, FRAMES = 160, 120, 10.0, 20
FACE = 72  # side of the downscaled sample face pasted into each frame


@pytest.fixture(scope="module")
def face_patch() -> np.ndarray:
    """The sample photo's face region, downscaled (RGB, FACE x FACE)."""
    with Image.open(samples.path("astronaut")) as img:
        rgb = np.asarray(img.convert("RGB"))
    return cv2.resize(rgb[30:210, 135:315], (FACE, FACE), interpolation=cv2.INTER_AREA)


def write_video(path: Path, frames: list[np.ndarray], fps: float = FPS) -> Path:
    """An mp4v video of RGB frames."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(np.ascontiguousarray(f[:, :, ::-1]))
    writer.release()
    return path


def moving_face_frames(face_patch: np.ndarray, n: int = FRAMES) -> list[np.ndarray]:
    """A face moving 3 px right and 1 px down per frame on a gray background."""
    frames = []
    for i in range(n):
        frame = np.full((H, W, 3), 128, np.uint8)
        x, y = 10 + 3 * i, 10 + i
        frame[y : y + FACE, x : x + FACE] = face_patch
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def video(tmp_path_factory, face_patch) -> Path:
    folder = tmp_path_factory.mktemp("video")
    return write_video(folder / "moving.mp4", moving_face_frames(face_patch))


class PixelNet(nn.Module):
    """A linear model on the pixels: its scores change visibly as the face moves."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(48 * 48, len(CLASSES))
        nn.init.normal_(self.fc.weight, std=0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    torch.manual_seed(0)
    return Recognizer(model=(PixelNet(), {"class_names": CLASSES}), device="cpu")


def scores(face: Face) -> np.ndarray:
    return np.array([face.scores[c] for c in CLASSES])


# ---- process_video ----


def test_one_moving_face_keeps_its_id(video, recognizer):
    with process_video(video, recognizer) as stream:
        assert (stream.width, stream.height, stream.fps, stream.frame_count) == (W, H, FPS, FRAMES)
        results = list(stream)
    assert [r.frame_index for r in results] == list(range(FRAMES))
    assert all(r.processed for r in results)
    assert [r.time_s for r in results] == pytest.approx([i / FPS for i in range(FRAMES)])
    assert stream.frames_read == stream.frames_processed == FRAMES
    assert all(len(r.faces) == 1 for r in results)
    assert {r.faces[0].track_id for r in results} == {1}
    xs = [r.faces[0].box[0] for r in results]
    assert xs[-1] - xs[0] > 40  # the box followed the face
    face = results[5].faces[0]
    assert isinstance(face, TrackedFace) and face.label in CLASSES
    assert face.to_dict()["id"] == 1 and set(face.to_dict()["scores"]) == set(CLASSES)


def test_a_stream_opened_without_a_recognizer_takes_one_later(video, recognizer):
    # as `ferkit webcam` opens its camera before the model loads
    with process_video(video, None) as stream:
        with pytest.raises(ValueError, match="no recognizer: .*set the stream's .recognizer"):
            next(stream)
        stream.recognizer = recognizer
        results = list(stream)
    assert [r.frame_index for r in results] == list(range(FRAMES))
    assert all(len(r.faces) == 1 for r in results)


def test_every_n_frames_carries_the_last_results(video, recognizer):
    seen = []
    stream = process_video(video, recognizer, every=3, on_frame=lambda f, r: seen.append(f.shape))
    results = list(stream)
    assert len(results) == FRAMES and seen == [(H, W, 3)] * FRAMES
    assert [r.frame_index for r in results if r.processed] == list(range(0, FRAMES, 3))
    assert stream.frames_processed == 7 and stream.frames_read == FRAMES
    for r in results:
        last = results[r.frame_index - r.frame_index % 3]
        assert r.faces == last.faces  # same boxes, ids and scores as the last analysed frame
    assert {r.faces[0].track_id for r in results} == {1}  # 9 px jumps still track


def test_smoothing_pulls_scores_toward_the_previous_frame(video, recognizer):
    raw = [scores(r.faces[0]) for r in process_video(video, recognizer)]
    assert np.abs(np.diff(raw, axis=0)).max() > 0.01  # the test model's scores do move
    alpha = 0.6
    smooth = [scores(r.faces[0]) for r in process_video(video, recognizer, smoothing=alpha)]
    assert np.allclose(smooth[0], raw[0])
    for t in range(1, FRAMES):
        assert np.allclose(smooth[t], alpha * smooth[t - 1] + (1 - alpha) * raw[t], atol=1e-6)
        assert np.abs(smooth[t] - smooth[t - 1]).sum() <= np.abs(raw[t] - smooth[t - 1]).sum()
        assert abs(smooth[t].sum() - 1) < 1e-5
    jitter_raw = np.abs(np.diff(raw, axis=0)).sum()
    assert np.abs(np.diff(smooth, axis=0)).sum() < 0.7 * jitter_raw


def test_frames_are_read_one_at_a_time(video, recognizer):
    stream = process_video(video, recognizer)
    first = next(stream)
    assert first.frame_index == 0 and stream.frames_read == 1
    stream.close()
    assert list(stream) == []


def test_missing_and_unreadable_videos(recognizer, video, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        process_video(tmp_path / "nope.mp4", recognizer)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(ValueError, match="notes.mp4"):
        process_video(text, recognizer)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video.read_bytes()[:1500])  # the index (moov) is at the end: lost
    with pytest.raises(ValueError, match="cut.mp4"):
        process_video(cut, recognizer)
    data = bytearray(video.read_bytes())
    start, end = data.find(b"mdat") + 8, data.find(b"moov") - 8
    data[start:end] = (bytes(range(256)) * (end // 256 + 1))[: end - start]  # garbled frames
    garbled = tmp_path / "garbled.mp4"
    garbled.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="garbled.mp4"):
        process_video(garbled, recognizer)
    with pytest.raises(ValueError, match="folder"):
        process_video(tmp_path, recognizer)
    with pytest.raises(ValueError, match="every"):
        process_video(video, recognizer, every=0)
    with pytest.raises(ValueError, match="smoothing"):
        process_video(video, recognizer, smoothing=1.0)


# ---- the tracker ----


def face_at(x: int, y: int, side: int = 40, happy: float = 0.5) -> Face:
    return Face(
        box=[x, y, side, side],
        landmarks=None,
        scores={"happy": happy, "sad": 1 - happy},
        label="happy" if happy >= 0.5 else "sad",
        confidence=max(happy, 1 - happy),
    )


def test_tracker_ids_new_faces_and_expiry():
    t = IouTracker(max_missed=2)
    assert [f.track_id for f in t.update([face_at(0, 0), face_at(100, 0)])] == [1, 2]
    # both move a little; a third face appears
    ids = [f.track_id for f in t.update([face_at(5, 0), face_at(104, 2), face_at(200, 200)])]
    assert ids == [1, 2, 3]
    # face 1 is gone for two updates (kept), then back: same id
    t.update([face_at(104, 2), face_at(200, 200)])
    t.update([face_at(104, 2), face_at(200, 200)])
    assert [f.track_id for f in t.update([face_at(6, 1), face_at(104, 2)])] == [1, 2]
    # face 3 missed once; face 1 now misses three updates: expired, a new id on return
    for _ in range(3):
        t.update([face_at(104, 2)])
    assert [f.track_id for f in t.update([face_at(6, 1)])] == [4]
    # a face far from any track never takes its id
    assert t.update([face_at(60, 60)])[0].track_id == 5


def test_tracker_matches_the_best_overlap_first():
    t = IouTracker()
    t.update([face_at(0, 0), face_at(30, 0)])  # ids 1 and 2, overlapping
    out = t.update([face_at(28, 0), face_at(2, 0)])  # listed right one first
    assert [(f.box[0], f.track_id) for f in out] == [(28, 2), (2, 1)]
    assert box_iou([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(50 / 150)
    assert box_iou([0, 0, 10, 10], [10, 0, 10, 10]) == 0.0


def test_tracker_smoothing_relabels_from_smoothed_scores():
    t = IouTracker(smoothing=0.75)
    t.update([face_at(0, 0, happy=0.9)])
    f = t.update([face_at(2, 0, happy=0.3)])[0]
    assert f.scores["happy"] == pytest.approx(0.75 * 0.9 + 0.25 * 0.3)
    assert f.label == "happy" and f.confidence == pytest.approx(0.75)
    with pytest.raises(ValueError, match="smoothing"):
        IouTracker(smoothing=-0.1)


def test_draw_tracked_draws_in_place():
    frame = np.full((H, W, 3), 128, np.uint8)
    face = TrackedFace(**vars(face_at(20, 30)), track_id=7)
    out = draw_tracked(frame, [face], ["happy", "sad"])
    assert out is frame and (frame != 128).any()
    assert (frame[70:, 100:] == 128).all()  # far from the box and its label: untouched


# ---- the commands ----


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ferkit")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def read_video(path: Path) -> tuple[int, tuple[int, int], float]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened()
    fps = cap.get(cv2.CAP_PROP_FPS)
    n, size = 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n, size = n + 1, frame.shape[1::-1]
    cap.release()
    return n, size, fps


def test_cli_video_writes_csv_and_annotated_video(video, checkpoint, tmp_path, capsys):
    out, table = tmp_path / "annotated.mp4", tmp_path / "frames.csv"
    code = cli("video", str(video), "--out", str(out), "--csv", str(table), "--model",
               str(checkpoint), "--device", "cpu")  # fmt: skip
    stdout, _ = capsys.readouterr()
    assert code == 0
    rows = list(csv.DictReader(table.open()))
    header = next(csv.reader(table.open()))
    assert header == ["frame", "time_s", "face_id", "x", "y", "w", "h", "label", "confidence"] + (
        CLASSES
    )
    assert [int(r["frame"]) for r in rows] == list(range(FRAMES))
    assert {r["face_id"] for r in rows} == {"1"}
    assert float(rows[10]["time_s"]) == pytest.approx(1.0)
    assert all(r["label"] in CLASSES for r in rows)
    assert abs(sum(float(rows[0][c]) for c in CLASSES) - 1) < 1e-3
    assert read_video(out) == (FRAMES, (W, H), FPS)
    assert f"{FRAMES} frames" in stdout and "1 distinct ids" in stdout
    assert f"{FRAMES} faces seen" in stdout and "frames/s" in stdout
    # the boxes were drawn: the annotated frames differ from the input's
    cap_in, cap_out = cv2.VideoCapture(str(video)), cv2.VideoCapture(str(out))
    a, b = cap_in.read()[1], cap_out.read()[1]
    assert np.abs(a.astype(int) - b).max() > 100


def test_cli_outputs_that_cannot_be_files_fail_before_any_work(video, checkpoint, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "file").write_text("")
    base = ["--model", str(checkpoint), "--device", "cpu"]
    for args, words in [
        (["--csv", str(folder)], "is a folder"),
        (["--out", str(tmp_path / "file" / "x.mp4")], "is a file, not a folder"),
        (["--out", str(tmp_path / "v.mp4"), "--csv", str(tmp_path / "v.mp4")],
         "would replace"),
        (["--out", str(tmp_path / "ok.mp4"), "--csv", str(folder)], "is a folder"),
    ]:
        with pytest.raises(ValueError, match=words):
            cli("video", str(video), *args, *base)
    assert not (tmp_path / "ok.mp4").exists()  # no stub left behind
    photo = tmp_path / "photo.JPG"
    photo.write_bytes(b"")
    with pytest.raises(ValueError, match="ferkit predict"):
        cli("video", str(photo), *base)


def test_cli_every_writes_every_frame_of_the_video(video, checkpoint, tmp_path, capsys):
    out, table = tmp_path / "every.avi", tmp_path / "every.csv"
    code = cli("video", str(video), "--out", str(out), "--csv", str(table), "--every", "3",
               "--smooth", "0.5", "--model", str(checkpoint), "--device", "cpu")  # fmt: skip
    stdout, _ = capsys.readouterr()
    assert code == 0
    rows = list(csv.DictReader(table.open()))
    assert [int(r["frame"]) for r in rows] == list(range(0, FRAMES, 3))
    assert read_video(out)[:2] == (FRAMES, (W, H))
    assert f"{FRAMES} frames, 7 analysed" in stdout


def test_cli_csv_to_stdout_and_frames_without_faces(checkpoint, tmp_path, capsys):
    blank = write_video(tmp_path / "blank.mp4", [np.full((H, W, 3), 90, np.uint8)] * 4)
    assert cli("video", str(blank), "--csv", "-", "--model", str(checkpoint)) == 0
    stdout, stderr = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(stdout)))
    assert [r["frame"] for r in rows] == ["0", "1", "2", "3"]
    assert all(r["face_id"] == "" and r["label"] == "" for r in rows)
    assert "4 frames" in stderr and "0 faces seen" in stderr


def test_cli_progress_bar_on_a_terminal(video, checkpoint, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert cli("video", str(video), "--every", "5", "--model", str(checkpoint)) == 0
    _, stderr = capsys.readouterr()
    assert f"{FRAMES}/{FRAMES}" in stderr


def test_cli_video_refuses_bad_outputs(video, checkpoint, tmp_path):
    with pytest.raises(ValueError, match="would replace"):
        cli("video", str(video), "--out", str(video), "--model", str(checkpoint))
    with pytest.raises(ValueError, match=r"\.mp4"):
        cli("video", str(video), "--out", str(tmp_path / "x.gif"), "--model", str(checkpoint))
    assert not (tmp_path / "x.gif").exists()
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        cli("video", str(tmp_path / "missing.mp4"), "--model", str(checkpoint))
    with pytest.raises(SystemExit):
        cli("video", str(video), "--smooth", "1.5")


def test_webcam_without_gui_support_says_what_to_do(capsys, monkeypatch):
    monkeypatch.setattr("ferkit.video._cv2_has_gui", lambda cv2: False)
    assert cli("webcam") != 0
    _, err = capsys.readouterr()
    assert "no GUI support" in err and "ferkit video" in err and "ferkit serve" in err


def test_webcam_without_a_display(capsys, monkeypatch):
    monkeypatch.setattr("ferkit.video._cv2_has_gui", lambda cv2: True)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert cli("webcam", "--camera", "0") != 0
    _, err = capsys.readouterr()
    assert "no display" in err and "ferkit video" in err
    monkeypatch.setenv("DISPLAY", ":0")
    assert display_problem() is None


def test_this_headless_opencv_is_detected():
    if not re.search(r"^\s*GUI:\s*NONE\s*$", cv2.getBuildInformation(), re.MULTILINE):
        pytest.skip("this OpenCV has GUI support")
    assert "no GUI support" in display_problem()


def test_webcam_without_a_camera(checkpoint, capsys, monkeypatch):
    monkeypatch.setattr("ferkit.video.display_problem", lambda: None)
    code = cli("webcam", "--camera", "97", "--model", str(checkpoint), "--device", "cpu")
    _, err = capsys.readouterr()
    assert code != 0 and "camera 97" in err and "cannot open" in err


def test_frame_result_is_plain_data():
    r = FrameResult(3, 0.3, [])
    assert r.processed and r.faces == []


# ---- times, outputs, pipes and terminals ----


class NoFaces:
    """A recognizer that finds nothing, fast: for what does not depend on faces."""

    class_names = CLASSES

    def predict(self, image, color="rgb"):
        return []


def test_times_follow_the_video_timestamps(tmp_path, face_patch):
    """A variable frame rate (GIF frames of 100 and 500 ms) gets the decoder's times."""
    recognizer = NoFaces()
    frames = [Image.fromarray(f) for f in moving_face_frames(face_patch, 6)]
    gif = tmp_path / "vfr.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=[100, 500] * 3)
    for every in (1, 2):  # frames between analysed ones are only grabbed
        times = [r.time_s for r in process_video(gif, recognizer, every=every)]
        assert times == pytest.approx([0.0, 0.1, 0.6, 0.7, 1.2, 1.3])


def test_constant_rate_times_are_exact(video, tmp_path, face_patch, monkeypatch):
    recognizer = NoFaces()
    avi = tmp_path / "moving.avi"
    writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
    for f in moving_face_frames(face_patch):
        writer.write(np.ascontiguousarray(f[:, :, ::-1]))
    writer.release()
    exact = [i / FPS for i in range(FRAMES)]
    for path in (video, avi):
        assert [r.time_s for r in process_video(path, recognizer, every=3)] == exact

    class Clock:  # a decoder whose timestamps are off in one way or another
        def __init__(self, cap, ms) -> None:
            self.cap, self.ms, self.frame = cap, ms, -1

        def read(self):
            self.frame += 1
            return self.cap.read()

        def grab(self):
            self.frame += 1
            return self.cap.grab()

        def get(self, prop):
            if prop == cv2.CAP_PROP_POS_MSEC:
                return self.ms(self.frame)
            return self.cap.get(prop)

        def __getattr__(self, name):
            return getattr(self.cap, name)

    opened = cv2.VideoCapture
    for ms in (
        lambda i: (i + 1) * 100.0,  # the next frame's time (some backends)
        lambda i: 0.0,  # no timestamps
        lambda i: i * 100.0 if i < 5 else 0.0,  # timestamps that go back
        lambda i: float("nan"),
    ):
        monkeypatch.setattr(cv2, "VideoCapture", lambda *a, ms=ms: Clock(opened(*a), ms))
        assert [r.time_s for r in process_video(video, recognizer)] == exact


def test_an_output_is_never_an_input_through_a_hard_link(video, checkpoint, tmp_path):
    link = tmp_path / "link.mp4"
    os.link(video, link)
    before = video.read_bytes()
    for option in ("--out", "--csv"):
        with pytest.raises(ValueError, match=f"{option} .*link.mp4 would replace"):
            cli("video", str(video), option, str(link), "--model", str(checkpoint))
    assert video.read_bytes() == before
    with pytest.raises(ValueError, match="would replace"):
        output_file(link, "--out", [video])


def odd_video(path: Path, face_patch: np.ndarray) -> Path:
    """An MJPEG .avi of (W + 1) x (H + 1) frames (OpenCV's own writer keeps odd sizes)."""
    size = (W + 1, H + 1)
    writer = cv2.VideoWriter(
        str(path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), FPS, size
    )
    assert writer.isOpened()
    for f in moving_face_frames(face_patch, 5):
        writer.write(np.ascontiguousarray(cv2.resize(f, size)[:, :, ::-1]))
    writer.release()
    return path


def test_cli_odd_sizes_are_kept_or_said(face_patch, checkpoint, tmp_path, capsys):
    odd = odd_video(tmp_path / "odd.avi", face_patch)
    assert read_video(odd)[1] == (W + 1, H + 1)
    base = ["--every", "5", "--model", str(checkpoint), "--device", "cpu"]
    assert cli("video", str(odd), "--out", str(tmp_path / "o.avi"), *base) == 0
    assert read_video(tmp_path / "o.avi") == (5, (W + 1, H + 1), FPS)
    assert "annotated video written to" in (stdout := capsys.readouterr().out)
    assert ", not" not in stdout
    assert cli("video", str(odd), "--out", str(tmp_path / "o.mp4"), *base) == 0
    assert read_video(tmp_path / "o.mp4") == (5, (W, H), FPS)
    stdout = capsys.readouterr().out
    assert f"({W} x {H}, not {W + 1} x {H + 1}: the last pixel column and row" in stdout


def test_cli_every_output_is_checked_before_any_is_made(video, checkpoint, tmp_path):
    if not Path("/proc").is_dir():
        pytest.skip("needs /proc, where no file can be made")
    out = tmp_path / "o" / "kept.mp4"
    out.parent.mkdir()
    out.write_bytes(b"an older video")
    for target in (out, tmp_path / "new.mp4"):
        with pytest.raises(ValueError, match=r"--csv /proc/ferkit-test\.csv: cannot write"):
            cli("video", str(video), "--out", str(target), "--csv", "/proc/ferkit-test.csv",
                "--model", str(checkpoint))  # fmt: skip
    assert out.read_bytes() == b"an older video" and not (tmp_path / "new.mp4").exists()


def test_cli_out_folder_and_names(video, checkpoint, tmp_path, capsys):
    base = ["--model", str(checkpoint)]
    with pytest.raises(ValueError, match=r"--out .* is a folder"):
        cli("video", str(video), "--out", str(tmp_path), *base)
    with pytest.raises(ValueError, match=r"--out .*noname: .*\.mp4, \.mov, \.m4v or \.avi"):
        cli("video", str(video), "--out", str(tmp_path / "noname"), *base)
    with pytest.raises(SystemExit):
        cli("video", "--help")
    assert "(.mp4, .mov, .m4v or .avi;" in " ".join(capsys.readouterr().out.split())


def test_cli_input_is_checked_before_the_model_loads(video, tmp_path, monkeypatch):
    def no_model(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("ferkit.video.recognizer_from_args", no_model)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        cli("video", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o.mp4"))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video.read_bytes()[:1500])
    with pytest.raises(ValueError, match="cut.mp4"):
        cli("video", str(cut), "--csv", str(tmp_path / "o.csv"))
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "o.csv").exists()


def test_ffmpeg_log_lines_are_silenced(video, tmp_path):
    """An unreadable video: one error line, not FFmpeg's own log too (unless asked for)."""
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video.read_bytes()[:1500])  # no index: FFmpeg logs "moov atom not found"
    code = f"import sys; from ferkit.cli import main; sys.exit(main(['video', {str(cut)!r}]))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_FFMPEG_")}
    quiet = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert quiet.returncode == 2
    assert quiet.stderr.splitlines() == [
        f"ferkit: error: {cut}: cannot read this video (unknown format or corrupt)"
    ]
    env["OPENCV_FFMPEG_LOGLEVEL"] = "16"  # the user's own setting is kept
    loud = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "moov atom not found" in loud.stdout + loud.stderr


class ClosedPipe(io.StringIO):
    """Standard output whose reader goes away after ``lines`` writes."""

    def __init__(self, lines: int) -> None:
        super().__init__()
        self.left = lines

    def write(self, text: str) -> int:
        if self.left <= 0:
            raise BrokenPipeError(32, "Broken pipe")
        self.left -= 1
        return super().write(text)

    def flush(self) -> None:
        if self.left <= 0:
            raise BrokenPipeError(32, "Broken pipe")


def test_cli_stdout_closed_early_finishes_the_video(
    video, checkpoint, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(sys, "stdout", ClosedPipe(1 + 2))  # the header, frames 0 and 5
    out = tmp_path / "pipe.mp4"
    base = ["--csv", "-", "--every", "5", "--model", str(checkpoint)]
    code = cli("video", str(video), "--out", str(out), *base)
    stderr = capsys.readouterr().err
    assert code == 1
    assert f"{out} holds only the first 11 of {FRAMES} frames" in stderr  # 0 to 10
    assert read_video(out) == (11, (W, H), FPS)  # a finished, playable file
    # with nothing else being written, a closed pipe is a quiet stop (as for any command)
    monkeypatch.setattr(sys, "stdout", ClosedPipe(1))
    with pytest.raises(BrokenPipeError):
        cli("video", str(video), *base)


class Terminal:
    """Standard output and error on one terminal: what each line ends up showing."""

    def __init__(self) -> None:
        self.text = []

    def stream(self):
        term = self

        class Stream(io.StringIO):
            def write(self, text: str) -> int:
                term.text.append(text)
                return len(text)

            def isatty(self) -> bool:
                return True

        return Stream()

    def lines(self) -> list[str]:
        shown, line, col = [], [], 0
        for ch in "".join(self.text):
            if ch == "\n":
                shown.append("".join(line).rstrip())
                line, col = [], 0
            elif ch == "\r":
                col = 0
            else:
                line[col : col + 1] = [ch]
                col += 1
        return shown + ["".join(line).rstrip()]


def test_cli_csv_rows_and_the_progress_bar_keep_their_own_lines(video, checkpoint, monkeypatch):
    term = Terminal()
    monkeypatch.setattr(sys, "stdout", term.stream())
    monkeypatch.setattr(sys, "stderr", term.stream())
    assert cli("video", str(video), "--csv", "-", "--every", "5", "--model", str(checkpoint)) == 0
    lines = term.lines()
    rows = [line for line in lines if re.match(r"\d+,\d+\.\d{3},", line)]
    assert [int(r.split(",")[0]) for r in rows] == list(range(0, FRAMES, 5))
    assert all(len(r.split(",")) == 9 + len(CLASSES) for r in rows)
    assert not [line for line in lines if "frame/s" in line and re.search(r"\d,\d+\.\d", line)]
    assert any(f"{FRAMES}/{FRAMES}" in line for line in lines)  # the bar was there


def test_cli_progress_lines_without_a_terminal(video, checkpoint, capsys, monkeypatch):
    monkeypatch.setattr("ferkit.video.PROGRESS_SECONDS", 0.0)  # a line for every frame
    assert cli("video", str(video), "--every", "10", "--model", str(checkpoint)) == 0
    stderr = capsys.readouterr().err
    assert f"{video}: frame 10 of {FRAMES} (50%)" in stderr and "min left" in stderr


def test_a_refused_output_leaves_no_folders_behind(tmp_path, monkeypatch):
    from ferkit import fileio

    def refuse(path, option, target):
        raise ValueError(f"{option} {target}: cannot write this file (Permission denied)")

    monkeypatch.setattr(fileio, "_check_writable", refuse)
    with pytest.raises(ValueError, match="cannot write"):
        fileio.output_file(tmp_path / "new" / "deeper" / "out.mp4", "--out")
    assert list(tmp_path.iterdir()) == []  # the folders it made for the check are gone
    (tmp_path / "kept").mkdir()
    with pytest.raises(ValueError):
        fileio.output_file(tmp_path / "kept" / "out.mp4", "--out")
    assert (tmp_path / "kept").is_dir()  # a folder that was there stays
    # also where the path reaches it through a folder that is not there
    (tmp_path / "kept" / "empty").mkdir()
    with pytest.raises(ValueError):
        fileio.output_file(tmp_path / "new1" / ".." / "kept" / "empty" / "out.mp4", "--out")
    assert (tmp_path / "kept" / "empty").is_dir() and not (tmp_path / "new1").exists()
