"""Review fixes of ``ferkit predict``, ``ferkit video`` and ``ferkit webcam``: outputs that
stay where they are asked to go, a batch that goes on, refused empty options, and a webcam
that fails with a message."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from test_recognize import two_photos
from test_video import ClosedPipe

from ferkit import samples
from ferkit.predict_cli import add_parsers as add_predict_parsers
from ferkit.recognize import Recognizer
from ferkit.video import IouTracker
from ferkit.video_cli import add_parsers as add_video_parsers

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ferkit")
    sub = parser.add_subparsers(dest="command", required=True)
    add_predict_parsers(sub)
    add_video_parsers(sub)
    args = parser.parse_args(list(argv))
    return args.func(args)


def predict(checkpoint: Path, *argv: str) -> int:
    return cli("predict", *argv, "--model", str(checkpoint), "--device", "cpu")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    with Image.open(samples.path("astronaut")) as img:
        return np.asarray(img.convert("RGB").resize((160, 160)))


@pytest.fixture
def photos(tmp_path, astronaut) -> Path:
    return two_photos(tmp_path / "photos", astronaut)


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


# ---- ferkit predict ----


def test_annotate_copies_of_a_parent_folder_stay_in_the_output_folder(
    checkpoint, photos, monkeypatch, capsys
):
    # `ferkit predict .. --annotate ann` from photos/sub: the copies belong in ann/photos/
    monkeypatch.chdir(photos / "sub")
    before = files_under(photos)
    assert predict(checkpoint, "..", "--annotate", "ann", "--json") == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(Path(r["annotated"]).as_posix() for r in records) == [
        "ann/photos/a.jpg",
        "ann/photos/sub/b.png",
    ]
    # nothing new outside ann (the copies went to photos/sub/.. = photos/ before)
    after = {p for p in files_under(photos) if not p.startswith("sub/ann/")}
    assert after == before


def test_annotate_never_writes_through_a_hard_link_of_an_input(checkpoint, photos, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.link(photos / "a.jpg", out / "a.jpg")  # the copy's name is another name of the input
    before = (photos / "a.jpg").read_bytes()
    with pytest.raises(ValueError, match="would replace the input"):
        predict(checkpoint, str(photos / "a.jpg"), "--annotate", str(out))
    assert (photos / "a.jpg").read_bytes() == before


def test_annotate_folder_inside_an_input_folder_is_not_searched(checkpoint, photos, capsys):
    out = photos / "annotated"
    for _ in range(2):  # the second run does not take the first run's copies as inputs
        assert predict(checkpoint, str(photos), "--annotate", str(out), "--json") == 0
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert sorted(Path(r["file"]).name for r in records) == ["a.jpg", "b.png"]
    assert files_under(out) == {"photos/a.jpg", "photos/sub/b.png"}
    # a glob into the input folder leaves it out too
    assert predict(checkpoint, str(photos / "**" / "*.*"), "--json") == 0
    assert len(capsys.readouterr().out.splitlines()) == 4  # without --annotate: all files
    assert predict(checkpoint, str(photos / "**" / "*.*"), "--json", "--annotate",
                   str(out)) == 0  # fmt: skip
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_the_same_file_named_twice_is_taken_once(checkpoint, photos, monkeypatch, capsys):
    monkeypatch.chdir(photos)
    assert predict(checkpoint, "a.jpg", "./a.jpg", "sub/../a.jpg", ".", "--json") == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in records] == ["a.jpg", "sub/b.png"]


def test_an_image_recognition_fails_on_does_not_end_the_batch(
    checkpoint, photos, tmp_path, monkeypatch, capsys
):
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (3, 2)).save(tiny)
    faces_in = Recognizer.faces_in

    def fragile(self, loaded):  # a detector that cannot take tiny images
        if min(loaded.pixels.shape[:2]) < 8:
            raise ValueError("range() arg 3 must not be zero")
        return faces_in(self, loaded)

    monkeypatch.setattr(Recognizer, "faces_in", fragile)
    code = predict(checkpoint, str(photos / "a.jpg"), str(tiny), str(photos / "sub" / "b.png"),
                   "--json")  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["file"] for r in records] == [str(photos / "a.jpg"), str(tiny),
                                           str(photos / "sub" / "b.png")]  # fmt: skip
    assert records[0]["error"] is None and records[2]["error"] is None
    assert str(tiny) in records[1]["error"] and "range()" in records[1]["error"]
    assert "1 of 3 input(s) failed" in err


def test_stdout_closed_early_still_annotates_every_image(
    checkpoint, photos, tmp_path, monkeypatch, capsys
):
    # `ferkit predict photos/ --json --annotate out | head -1`: the copies are all made
    monkeypatch.setattr(sys, "stdout", ClosedPipe(1))
    out = tmp_path / "out"
    assert predict(checkpoint, str(photos), "--json", "--annotate", str(out)) == 1
    assert files_under(out) == {"photos/a.jpg", "photos/sub/b.png"}
    err = capsys.readouterr().err
    assert "standard output was closed early" in err and "2 annotated image(s)" in err
    # with nothing else being written, a closed pipe is a quiet stop (as for any command)
    monkeypatch.setattr(sys, "stdout", ClosedPipe(1))
    with pytest.raises(BrokenPipeError):
        predict(checkpoint, str(photos), "--json")


def test_annotate_empty_or_unused_leaves_nothing(checkpoint, photos, tmp_path):
    with pytest.raises(ValueError, match="--annotate is empty"):
        predict(checkpoint, str(photos / "a.jpg"), "--annotate", "")
    out = tmp_path / "new" / "deeper"
    with pytest.raises(ValueError, match="unknown face detector"):
        predict(checkpoint, str(photos / "a.jpg"), "--annotate", str(out), "--detector", "bad")
    assert not (tmp_path / "new").exists()  # no empty folder from a run that never started


# ---- ferkit video ----


@pytest.fixture
def clip(tmp_path, astronaut) -> Path:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 160))
    assert writer.isOpened()
    for _ in range(3):
        writer.write(np.ascontiguousarray(astronaut[:, :, ::-1]))
    writer.release()
    return path


def test_video_refuses_an_empty_out_or_csv(clip, checkpoint, capsys):
    for option in ("--out", "--csv"):  # was: nothing written, exit status 0
        with pytest.raises(ValueError, match=f"{option} is empty"):
            cli("video", str(clip), option, "", "--model", str(checkpoint), "--device", "cpu")
    assert "frames" not in capsys.readouterr().out


def test_video_leaves_no_folders_when_it_cannot_start(clip, checkpoint, tmp_path):
    out, table = tmp_path / "new" / "a" / "x.mp4", tmp_path / "new" / "b" / "x.csv"
    with pytest.raises(ValueError, match="unknown face detector"):
        cli("video", str(clip), "--out", str(out), "--csv", str(table), "--detector", "bad",
            "--model", str(checkpoint))  # fmt: skip
    assert not (tmp_path / "new").exists()


def test_tracker_refuses_an_iou_threshold_outside_0_1():
    for bad in (-0.1, 30, float("nan")):
        with pytest.raises(ValueError, match="iou_threshold"):
            IouTracker(iou_threshold=bad)


# ---- ferkit webcam ----


class FakeCamera:
    """A camera that sends ``frames`` gray frames, or none when not ``opened``."""

    def __init__(self, opened: bool = True, frames: int = 3) -> None:
        self.opened, self.left = opened, frames

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return self.opened

    def read(self):
        if self.left <= 0:
            return False, None
        self.left -= 1
        return True, np.full((48, 64, 3), 100, np.uint8)

    def grab(self) -> bool:
        return self.read()[0]

    def get(self, prop) -> float:
        return 0.0

    def release(self) -> None:
        self.opened = False


class NoFaces:
    class_names = CLASSES

    def predict(self, image, color="rgb"):
        return []


def test_webcam_opens_the_camera_before_loading_the_model(monkeypatch, capsys):
    monkeypatch.setattr("ferkit.video.display_problem", lambda: None)
    monkeypatch.setattr(cv2, "VideoCapture", lambda *a: FakeCamera(opened=False))

    def no_model(args):
        raise AssertionError("the model was loaded before the camera was found")

    monkeypatch.setattr("ferkit.video.recognizer_from_args", no_model)
    assert cli("webcam", "--camera", "3") == 2
    assert "camera 3" in capsys.readouterr().err


def test_webcam_window_that_cannot_open_is_a_message_not_a_traceback(monkeypatch, capsys):
    # e.g. an OpenCV whose GUI backend cannot reach the display named by DISPLAY
    monkeypatch.setattr("ferkit.video.display_problem", lambda: None)
    monkeypatch.setattr(cv2, "VideoCapture", lambda *a: FakeCamera())
    monkeypatch.setattr("ferkit.video.recognizer_from_args", lambda args: NoFaces())

    def no_window(*args):
        raise cv2.error("OpenCV(4.x) window.cpp: error: (-2) Can't initialize GTK backend")

    monkeypatch.setattr(cv2, "namedWindow", no_window)
    assert cli("webcam") == 2
    err = capsys.readouterr().err
    assert "cannot show its window" in err and "GTK" in err and "ferkit video" in err
