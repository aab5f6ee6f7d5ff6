"""Tests for ferkit.metrics: hand-computed metrics, calibration, validation, plots, Markdown."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from ferkit.metrics import (
    classification_report,
    plot_confusion_matrix,
    plot_reliability,
    plot_training_curves,
    write_markdown_report,
)

NAMES = ["angry", "happy", "sad"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _probs_for(preds: list[int], num_classes: int = 3, top: float = 0.8) -> np.ndarray:
    """Probabilities whose argmax is ``preds``: ``top`` on the predicted class, the rest shared."""
    probs = np.full((len(preds), num_classes), (1.0 - top) / (num_classes - 1))
    probs[np.arange(len(preds)), preds] = top
    return probs


@pytest.fixture
def three_class_report() -> dict:
    # true 0 (4 samples) -> predicted 0, 0, 1, 2
    # true 1 (2 samples) -> predicted 1, 0
    # true 2 (3 samples) -> predicted 2, 2, 1
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    preds = [0, 0, 1, 2, 1, 0, 2, 2, 1]
    return classification_report(_probs_for(preds), labels, NAMES)


def test_three_class_by_hand(three_class_report: dict) -> None:
    r = three_class_report
    # Confusion matrix (rows true, cols predicted):
    #   [[2, 1, 1],
    #    [1, 1, 0],
    #    [0, 1, 2]]
    assert r["confusion_matrix"] == [[2, 1, 1], [1, 1, 0], [0, 1, 2]]
    assert r["num_samples"] == 9
    # accuracy = diagonal / N = (2 + 1 + 2) / 9 = 5/9
    assert r["accuracy"] == pytest.approx(5 / 9)
    # column sums (predicted counts) = [3, 3, 3]; row sums (support) = [4, 2, 3]
    # precision = TP / predicted = [2/3, 1/3, 2/3]; recall = TP / support = [2/4, 1/2, 2/3]
    # F1 = 2PR / (P + R):
    #   angry: 2 * (2/3)(1/2) / (2/3 + 1/2) = (2/3) / (7/6) = 4/7
    #   happy: 2 * (1/3)(1/2) / (1/3 + 1/2) = (1/3) / (5/6) = 2/5
    #   sad:   P = R = 2/3 -> 2/3
    expected = {
        "angry": (2 / 3, 1 / 2, 4 / 7, 4),
        "happy": (1 / 3, 1 / 2, 2 / 5, 2),
        "sad": (2 / 3, 2 / 3, 2 / 3, 3),
    }
    for name, (precision, recall, f1, support) in expected.items():
        scores = r["per_class"][name]
        assert scores["precision"] == pytest.approx(precision)
        assert scores["recall"] == pytest.approx(recall)
        assert scores["f1"] == pytest.approx(f1)
        assert scores["support"] == support
    # macro-F1 = (4/7 + 2/5 + 2/3) / 3 = (60 + 42 + 70) / 105 / 3 = 172/315
    assert r["macro_f1"] == pytest.approx(172 / 315)
    # row-normalised: each row divided by its support
    assert np.allclose(
        r["confusion_matrix_normalized"],
        [[2 / 4, 1 / 4, 1 / 4], [1 / 2, 1 / 2, 0], [0, 1 / 3, 2 / 3]],
    )


def test_report_is_json_serialisable(three_class_report: dict) -> None:
    assert json.loads(json.dumps(three_class_report, allow_nan=False)) == three_class_report


def test_never_predicted_class_has_zero_precision_not_nan() -> None:
    # Everything predicted as class 0: classes 1 and 2 are never predicted.
    r = classification_report(_probs_for([0, 0, 0]), np.array([0, 1, 2]), NAMES)
    assert r["per_class"]["happy"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["per_class"]["sad"]["precision"] == 0.0
    # angry: P = 1/3, R = 1 -> F1 = 2(1/3)/(4/3) = 1/2; macro-F1 = (1/2 + 0 + 0) / 3 = 1/6
    assert r["per_class"]["angry"]["precision"] == pytest.approx(1 / 3)
    assert r["macro_f1"] == pytest.approx(1 / 6)


def test_zero_support_row_normalises_to_zeros() -> None:
    r = classification_report(_probs_for([0, 2]), np.array([0, 0]), NAMES)
    assert r["confusion_matrix_normalized"][1] == [0.0, 0.0, 0.0]
    assert r["per_class"]["happy"]["recall"] == 0.0


def test_ece_single_bin() -> None:
    # 10 samples, all with confidence 0.9, 6 correct: one bin, |0.6 - 0.9| = 0.3.
    probs = np.tile([0.9, 0.05, 0.05], (10, 1))
    labels = np.array([0] * 6 + [1] * 4)
    r = classification_report(probs, labels, NAMES, num_bins=10)
    assert r["ece"] == pytest.approx(0.3)
    assert sum(r["reliability"]["bin_count"]) == 10
    assert max(r["reliability"]["bin_count"]) == 10
    # NLL = -(6 log 0.9 + 4 log 0.05) / 10
    assert r["nll"] == pytest.approx(-(6 * math.log(0.9) + 4 * math.log(0.05)) / 10)


def test_ece_two_bins() -> None:
    # Bins (0, 0.5] and (0.5, 1]:
    #   4 samples at confidence 0.4, 2 correct -> accuracy 0.5,  gap 0.1
    #   4 samples at confidence 0.9, 3 correct -> accuracy 0.75, gap 0.15
    # ECE = 4/8 * 0.1 + 4/8 * 0.15 = 0.125
    probs = np.array([[0.4, 0.3, 0.3]] * 4 + [[0.9, 0.05, 0.05]] * 4)
    labels = np.array([0, 0, 1, 2, 0, 0, 0, 1])
    r = classification_report(probs, labels, NAMES, num_bins=2)
    rel = r["reliability"]
    assert rel["bin_edges"] == [0.0, 0.5, 1.0]
    assert rel["bin_count"] == [4, 4]
    assert rel["bin_confidence"] == pytest.approx([0.4, 0.9])
    assert rel["bin_accuracy"] == pytest.approx([0.5, 0.75])
    assert r["ece"] == pytest.approx(0.125)


def test_nll_is_finite_for_zero_probability() -> None:
    r = classification_report(np.array([[1.0, 0.0, 0.0]]), np.array([1]), NAMES)
    assert math.isfinite(r["nll"]) and r["nll"] > 20


@pytest.mark.parametrize(
    ("probs", "labels", "names", "match"),
    [
        (np.full(3, 1 / 3), np.array([0]), NAMES, "2-D"),
        (np.full((2, 3), 1 / 3), np.array([0, 1, 2]), NAMES, "shape"),
        (np.full((2, 3), 1 / 3), np.array([0, 3]), NAMES, "labels must lie in"),
        (np.full((2, 3), 1 / 3), np.array([-1, 0]), NAMES, "labels must lie in"),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), NAMES, "zero samples"),
        (np.full((2, 3), 1 / 3), np.array([0, 1]), NAMES[:2], "class names"),
    ],
    ids=["not-2d", "shape-mismatch", "label-too-big", "label-negative", "empty", "names-length"],
)
def test_invalid_inputs_raise(probs, labels, names, match) -> None:
    with pytest.raises(ValueError, match=match):
        classification_report(probs, labels, names)


def _assert_png(path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_plots_write_png_and_close_figures(three_class_report: dict, tmp_path) -> None:
    plt = pytest.importorskip("matplotlib.pyplot")
    open_before = len(plt.get_fignums())
    cm = plot_confusion_matrix(three_class_report, tmp_path / "new" / "cm.png", title="Test")
    rel = plot_reliability(three_class_report, tmp_path / "new" / "reliability.png")
    _assert_png(cm)
    _assert_png(rel)
    assert len(plt.get_fignums()) == open_before


def test_training_curves_accept_missing_keys(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    rows = [
        {"epoch": 1, "train_loss": 1.2, "train_acc": 0.4},
        {"epoch": 2, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.1, "val_acc": 0.45},
        {"train_loss": 0.9},
        {"epoch": 4, "val_acc": 0.55},
    ]
    _assert_png(plot_training_curves(rows, tmp_path / "curves" / "training.png"))
    _assert_png(plot_training_curves([], tmp_path / "empty.png"))


def test_plots_without_matplotlib_explain_install(
    three_class_report, tmp_path, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'ferkit\[plots\]'"):
        plot_reliability(three_class_report, tmp_path / "x.png")


def test_markdown_report(three_class_report: dict, tmp_path) -> None:
    path = write_markdown_report(
        three_class_report,
        tmp_path / "out" / "report.md",
        title="FER2013 test",
        extra={"split": "test", "tta": True},
        images={"Confusion matrix": "confusion_matrix.png"},
    )
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# FER2013 test")
    for name in NAMES:
        assert name in text
    assert "0.5556" in text  # accuracy 5/9
    assert "| split | test |" in text
    assert "| angry | 2 | 1 | 1 |" in text  # confusion matrix row of counts
    assert "![Confusion matrix](confusion_matrix.png)" in text


def test_macro_f1_averages_the_classes_present(tmp_path) -> None:
    names = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    # 3 classes present of 7, predicted right but one: F1 0 for absent classes would give
    # 0.356; over the three present, (1 + 2/3 + 4/5) / 3
    labels = np.array([0, 0, 3, 3, 3, 6])
    r = classification_report(_probs_for([0, 0, 3, 3, 6, 6], 7), labels, names)
    # happy: P 1, R 2/3 -> 4/5; neutral: P 1/2, R 1 -> 2/3
    assert r["macro_f1"] == pytest.approx((1 + 4 / 5 + 2 / 3) / 3)
    assert r["absent_classes"] == ["disgust", "fear", "sad", "surprise"]
    text = write_markdown_report(r, tmp_path / "report.md", title="t").read_text()
    assert "classes without test images, never predicted (not in macro-F1) | disgust, fear, sad, surprise" in text


def test_macro_f1_with_every_class_present_is_the_plain_mean() -> None:
    # FER2013's test split has every class: the number is what it always was
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.arange(7), rng.integers(0, 7, 200)])
    probs = rng.dirichlet(np.ones(7), size=len(labels))
    r = classification_report(probs, labels, [str(i) for i in range(7)])
    assert r["absent_classes"] == []
    assert r["macro_f1"] == pytest.approx(np.mean([c["f1"] for c in r["per_class"].values()]))


def test_training_curves_have_whole_epoch_ticks(tmp_path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    from ferkit import metrics

    figures = []
    monkeypatch.setattr(metrics, "_save", lambda fig, path: figures.append(fig))
    rows = [{"epoch": e, "train_loss": 1 / e, "val_acc": 0.1 * e} for e in (1, 2, 3)]
    plot_training_curves(rows, tmp_path / "curves.png")
    for ax in figures[0].axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_macro_f1_counts_a_predicted_class_without_test_images() -> None:
    # as scikit-learn: labels [a a a a], predictions [a a b b]: a's F1 2/3, b's 0 -> 1/3
    r = classification_report(_probs_for([0, 0, 1, 1], 3), np.zeros(4, int), ["a", "b", "c"])
    assert r["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)
    # listed: the classes left out of macro-F1 only (b is predicted, so counted with F1 0)
    assert r["absent_classes"] == ["c"]
