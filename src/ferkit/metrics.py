"""Evaluation metrics (pure numpy) and report plots (matplotlib, optional).

``classification_report`` turns predicted class probabilities and true labels into a
JSON-serialisable dict; the ``plot_*`` functions and ``write_markdown_report`` render
such a dict. Matplotlib is imported lazily, so ``import ferkit.metrics`` works without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

_NLL_EPS = 1e-12
_PLOTS_HINT = "plotting needs matplotlib: pip install 'ferkit[plots]'"


# --------------------------------------------------------------------------- metrics


def _validate(probs: Any, labels: Any, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes, ranges and types; return ``probs`` as float64 and ``labels`` as int64."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2:
        raise ValueError(f"probs must be 2-D (N, C), got shape {probs.shape}")
    n, c = probs.shape
    if n == 0:
        raise ValueError("cannot evaluate zero samples (probs has N = 0 rows)")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"labels must have shape ({n},) to match probs {probs.shape}, got {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if len(class_names) != c:
        raise ValueError(f"got {len(class_names)} class names for {c} probability columns")
    if labels.min() < 0 or labels.max() >= c:
        raise ValueError(
            f"labels must lie in [0, {c - 1}], got values from {labels.min()} to {labels.max()}"
        )
    if not np.all(np.isfinite(probs)):
        raise ValueError("probs contains NaN or infinite values")
    return probs, labels.astype(np.int64)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Count matrix ``cm[t, p]``: how many samples of true class ``t`` were predicted as ``p``."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise ``num / den`` that is 0 where ``den`` is 0 (instead of NaN)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def per_class_scores(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix.

    precision = TP / predicted-as-class (0 if the class is never predicted),
    recall = TP / support (0 if the class has no samples),
    F1 = harmonic mean of precision and recall (0 if both are 0).
    """
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    precision = _safe_divide(tp, cm.sum(axis=0))
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return precision, recall, f1, support


def normalize_rows(cm: np.ndarray) -> np.ndarray:
    """Row-normalise a confusion matrix: each row sums to 1 (all zeros for a row with no samples)."""
    return _safe_divide(cm, np.broadcast_to(cm.sum(axis=1, keepdims=True), cm.shape))


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, num_bins: int
) -> dict[str, list[float] | list[int]]:
    """Group predictions into ``num_bins`` equal-width confidence bins over [0, 1].

    Bin ``i`` holds confidences in ``(edges[i], edges[i + 1]]`` (the first bin also holds 0).
    Per bin: mean confidence, accuracy (fraction correct) and count; empty bins report 0, 0, 0.
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    idx = np.clip(np.searchsorted(edges[1:-1], confidence, side="left"), 0, num_bins - 1)
    count = np.bincount(idx, minlength=num_bins)
    conf_sum = np.bincount(idx, weights=confidence, minlength=num_bins)
    correct_sum = np.bincount(idx, weights=correct.astype(np.float64), minlength=num_bins)
    return {
        "bin_edges": edges.tolist(),
        "bin_confidence": _safe_divide(conf_sum, count).tolist(),
        "bin_accuracy": _safe_divide(correct_sum, count).tolist(),
        "bin_count": count.astype(int).tolist(),
    }


def expected_calibration_error(reliability: dict[str, list]) -> float:
    """ECE: mean over bins of |accuracy - confidence|, weighted by the fraction of samples in each bin.

    0 means the model's confidence matches how often it is right; higher is worse calibrated.
    """
    count = np.asarray(reliability["bin_count"], dtype=np.float64)
    gap = np.abs(
        np.asarray(reliability["bin_accuracy"]) - np.asarray(reliability["bin_confidence"])
    )
    return float(np.sum(gap * count) / count.sum())


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean of -log p(true class); probabilities are clipped at 1e-12 so a 0 gives ~27.6, not inf."""
    p_true = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(p_true, _NLL_EPS, 1.0))))


def classification_report(
    probs: np.ndarray, labels: np.ndarray, class_names: list[str], num_bins: int = 15
) -> dict[str, Any]:
    """Accuracy, per-class scores, confusion matrices and calibration for a classifier.

    Args:
        probs: (N, C) predicted class probabilities; the prediction is the argmax and the
            confidence is the max probability.
        labels: (N,) integer true classes in ``[0, C)``.
        class_names: C names, in column order.
        num_bins: number of equal-width confidence bins for ECE and the reliability diagram.

    Returns:
        A JSON-serialisable dict with ``num_samples``, ``accuracy`` (fraction correct),
        ``macro_f1`` (unweighted mean of per-class F1 over the classes that occur in
        ``labels`` or in the predictions, as scikit-learn averages: a class with no test
        images that is never predicted has no F1 to average, one that is predicted counts
        with F1 0), ``absent_classes`` (names of the classes left out of macro-F1: no true
        sample and never predicted, in column order), ``per_class``
        ({name: {precision, recall, f1, support}}), ``confusion_matrix`` (counts, rows = true,
        cols = predicted), ``confusion_matrix_normalized`` (row-normalised), ``ece``
        (expected calibration error), ``nll`` (mean negative log-likelihood) and
        ``reliability`` ({bin_edges, bin_confidence, bin_accuracy, bin_count}).

    Raises:
        ValueError: on malformed shapes, N = 0, labels out of range or a wrong number of names.
    """
    probs, labels = _validate(probs, labels, class_names)
    preds = probs.argmax(axis=1)
    correct = preds == labels
    cm = confusion_matrix(labels, preds, probs.shape[1])
    precision, recall, f1, support = per_class_scores(cm)
    reliability = reliability_bins(probs.max(axis=1), correct, num_bins)
    present = support > 0  # N >= 1: at least one class is present
    averaged = present | (cm.sum(axis=0) > 0)  # predicted without a true sample: F1 0
    return {
        "num_samples": int(labels.shape[0]),
        "accuracy": float(correct.mean()),
        "macro_f1": float(f1[averaged].mean()),
        "absent_classes": [name for name, a in zip(class_names, averaged, strict=True) if not a],
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.astype(int).tolist(),
        "confusion_matrix_normalized": normalize_rows(cm).tolist(),
        "ece": expected_calibration_error(reliability),
        "nll": negative_log_likelihood(probs, labels),
        "reliability": reliability,
    }


# --------------------------------------------------------------------------- plots


def _pyplot():
    """Import pyplot on the non-interactive Agg backend, with an install hint if it is missing."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(_PLOTS_HINT) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG to ``path`` (creating its folder) and close it; the path written.

    A path without a suffix gets ``.png`` (as matplotlib would add it), so that the path
    returned is the file's."""
    import matplotlib.pyplot as plt

    path = Path(path)
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_confusion_matrix(
    report: dict[str, Any], path: str | os.PathLike, title: str = "Confusion matrix"
) -> Path:
    """Heatmap of the row-normalised confusion matrix, each cell annotated with count and share."""
    plt = _pyplot()
    names = list(report["per_class"])
    counts = np.asarray(report["confusion_matrix"])
    norm = np.asarray(report["confusion_matrix_normalized"])
    size = max(4.5, 0.9 * len(names) + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    for (t, p), count in np.ndenumerate(counts):
        color = "white" if norm[t, p] > 0.5 else "black"
        ax.text(
            p, t, f"{count}\n{norm[t, p]:.0%}", ha="center", va="center", color=color, fontsize=8
        )
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\n(accuracy {report['accuracy']:.2%}, N = {report['num_samples']})")
    return _save(fig, path)


def plot_reliability(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Reliability diagram: accuracy vs confidence per bin, the ideal diagonal, and bin counts."""
    plt = _pyplot()
    rel = report["reliability"]
    edges = np.asarray(rel["bin_edges"])
    left, width = edges[:-1], np.diff(edges)
    count = np.asarray(rel["bin_count"])
    filled = count > 0
    fig, (ax, ax_hist) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.bar(
        left[filled],
        np.asarray(rel["bin_accuracy"])[filled],
        width=width[filled],
        align="edge",
        color="tab:blue",
        edgecolor="black",
        label="accuracy",
    )
    ax.plot(
        np.asarray(rel["bin_confidence"])[filled],
        np.asarray(rel["bin_accuracy"])[filled],
        "o",
        color="tab:orange",
        markersize=4,
        label="mean confidence",
    )
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram (ECE = {report['ece']:.3f})")
    ax.legend(loc="upper left")
    ax_hist.bar(left, count, width=width, align="edge", color="gray", edgecolor="black")
    ax_hist.set_xlabel("confidence (max probability)")
    ax_hist.set_ylabel("samples")
    fig.tight_layout()
    return _save(fig, path)


def _series(log_rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the rows that have ``key``; a row without ``epoch`` uses its 1-based position."""
    epochs, values = [], []
    for position, row in enumerate(log_rows, start=1):
        if row.get(key) is not None:
            epochs.append(row.get("epoch", position))
            values.append(row[key])
    return epochs, values


def plot_training_curves(log_rows: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Two panels, loss and accuracy per epoch, train vs val; keys missing from a row are skipped."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in zip(axes, ("loss", "acc"), ("loss", "accuracy"), strict=True):
        for split in ("train", "val"):
            epochs, values = _series(log_rows, f"{split}_{metric}")
            if epochs:
                ax.plot(epochs, values, marker="o", markersize=3, label=split)
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_ylabel(label)
        ax.set_title(label.capitalize())
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- markdown


def _cell(value: Any) -> str:
    """Format a value for a Markdown table cell (floats to 4 decimals, pipes escaped)."""
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """Lines of a Markdown table."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join(["---"] * len(header)) + "|")
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def write_markdown_report(
    report: dict[str, Any],
    path: str | os.PathLike,
    title: str,
    extra: dict[str, Any] | None = None,
    images: dict[str, str] | None = None,
) -> Path:
    """Write a readable Markdown report of a ``classification_report`` dict.

    Sections: a summary table (accuracy, macro-F1, ECE, NLL, N and the ``extra`` key/values,
    e.g. split, TTA, checkpoint), the per-class table, the confusion matrix of counts, and
    images (``images`` maps a caption to a PNG path relative to the report).
    """
    summary = [
        ["accuracy", report["accuracy"]],
        ["macro-F1", report["macro_f1"]],
        ["ECE", report["ece"]],
        ["NLL", report["nll"]],
        ["N", report["num_samples"]],
    ]
    if report.get("absent_classes"):
        summary.append(["classes without test images, never predicted (not in macro-F1)",
                        ", ".join(report["absent_classes"])])
    summary += [[key, value] for key, value in (extra or {}).items()]
    per_class = [
        [name, s["precision"], s["recall"], s["f1"], s["support"]]
        for name, s in report["per_class"].items()
    ]
    names = list(report["per_class"])
    cm_rows = [[name, *row] for name, row in zip(names, report["confusion_matrix"], strict=True)]
    lines = [f"# {title}", "", "## Summary", ""]
    lines += _table(["metric", "value"], summary)
    lines += ["", "## Per class", ""]
    lines += _table(["class", "precision", "recall", "F1", "support"], per_class)
    lines += ["", "## Confusion matrix", "", "Rows: true class; columns: predicted (counts).", ""]
    lines += _table(["true \\ predicted", *names], cm_rows)
    for caption, image in (images or {}).items():
        lines += ["", f"### {caption}", "", f"![{caption}]({image})"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
