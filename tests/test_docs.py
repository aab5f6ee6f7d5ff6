"""The Python examples of README.md and docs/*.md run as written (in a scratch folder that
holds the files they name: a photo, a short video, a tiny dataset in memory)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def examples() -> list[tuple[str, int, str]]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for m in BLOCK.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.append((doc.relative_to(REPO).as_posix(), line, m.group(1)))
    return found


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """photo.jpg (the bundled sample) and clip.mp4 (it, moving, 12 frames)."""
    cv2 = pytest.importorskip("cv2")
    from ferkit import samples

    folder = tmp_path_factory.mktemp("docs")
    image = cv2.imread(str(samples.path()))
    cv2.imwrite(str(folder / "photo.jpg"), image)
    h, w = image.shape[:2]
    video = cv2.VideoWriter(str(folder / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (w, h))
    for i in range(12):
        video.write(cv2.warpAffine(image, np.float32([[1, 0, 3 * i], [0, 1, 0]]), (w, h)))
    video.release()
    return folder


def test_the_documents_have_examples():
    names = {doc for doc, _, _ in examples()}
    assert {"README.md", "docs/recognition.md"} <= names


@pytest.mark.parametrize("doc,line,code", examples(), ids=lambda v: str(v)[:40])
def test_example_runs(doc, line, code, scratch, monkeypatch, ferkit_cache):
    monkeypatch.chdir(scratch)
    rng = np.random.default_rng(0)
    n = 42  # the training example's data in memory: noise faces in FER2013's three splits
    namespace = {
        "__name__": "__docs__",
        "images": rng.integers(0, 256, (n, 48, 48), dtype=np.uint8),
        "labels": np.arange(n) % 7,
        "splits": np.array(["Training"] * 28 + ["PublicTest"] * 7 + ["PrivateTest"] * 7),
    }
    # the examples' lengths, cut to a test's: 30 epochs of noise teach nothing more than 1
    long = '{"epochs": 30, "batch_size": 128}'
    if "fit(" in code:
        assert long in code, "the training example changed: cut its length here too"
        code = code.replace(long, '{"epochs": 1, "batch_size": 16}')
    exec(compile(code, f"{doc}:{line}", "exec"), namespace)
