"""The shipped weights score what their model cards say, with torch and with onnxruntime.

Real data only (``realdata``): the folder named by ``FERKIT_DATA`` holding
``fer2013/fer2013.csv.gz`` and ``fer2013/fer2013new.csv``. The expected figures are the
model cards' own reports (``docs/<name>/privatetest.json``, single crop); a change to the
preprocessing, the evaluation or the weights that moves them fails here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import ferkit
from ferkit.evaluate import evaluate

REPO = Path(__file__).resolve().parents[1]
#: a few images either way (CPU kernels round differently across processors)
TOLERANCE_IMAGES = 3


@pytest.fixture(scope="module")
def fer2013(tmp_path_factory) -> Path:
    root = os.environ.get("FERKIT_DATA")
    if not root:
        pytest.skip("FERKIT_DATA is not set (the folder holding fer2013/fer2013.csv.gz)")
    # one cache for the module: the CSV is parsed and each model exported to ONNX once
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERKIT_CACHE", str(tmp_path_factory.mktemp("ferkit-cache")))
        yield Path(root) / "fer2013"


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("name", ["mba_cnn-fer2013", "mba_cnn-ferplus"])
def test_shipped_weights_score_their_model_card(fer2013, name, backend):
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    card = json.loads((REPO / "docs" / name / "privatetest.json").read_text())["none"]
    report = evaluate(
        Path(ferkit.__file__).parent / "weights" / name, fer2013 / "fer2013.csv.gz",
        split="PrivateTest", tta="none", device="cpu", progress=False, backend=backend,
        ferplus=str(fer2013 / "fer2013new.csv") if "ferplus" in name else None,
    )
    assert report["num_samples"] == card["num_samples"]
    allowed = TOLERANCE_IMAGES / card["num_samples"]
    assert report["accuracy"] == pytest.approx(card["accuracy"], abs=allowed), (
        f"{name} ({backend}): {report['accuracy']:.4f} on PrivateTest, "
        f"the model card says {card['accuracy']:.4f}"
    )
