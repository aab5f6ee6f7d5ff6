"""Accuracy on dark, washed-out and low-contrast faces, with and without auto-contrast.

Each face of a dataset split (no detection: the dataset's crops) is changed photometrically
(darkened, contrast reduced, washed out, gamma, brightened) and classified by `Recognizer`
with ``auto_contrast`` on (the default: a face of less contrast than 99 % of FER2013's
training faces is moved to their typical contrast, `ferkit.recognize.lift_contrast`) and
off (the faces as they are, as ``ferkit eval`` scores them). Prints a Markdown table:
accuracy in % per change and mode, the share of faces auto-contrast changed, and the
accuracy on the dataset's own faces that it changes (as recorded).

``--photo [PATH]`` does the same to a whole photo (default: the bundled sample) instead of a
dataset, detection included, and prints each face's label and confidence per change and
mode; ``--picture OUT.png`` also draws the faces as the model sees them (ferkit[plots]).

    PYTHONPATH=src python benchmarks/low_contrast.py --data fer2013.csv.gz
        [--split PublicTest] [--model NAME|PATH] [--backend onnx] [--limit N]
    PYTHONPATH=src python benchmarks/low_contrast.py --photo [PATH] [--picture OUT.png]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from ferkit.argtypes import BACKENDS, whole_number
from ferkit.recognize import Recognizer, load_image


def _mean(x: np.ndarray) -> np.ndarray:
    return x.mean((1, 2), keepdims=True)


CHANGES = {
    "as recorded": lambda x: x,
    "dark x 0.3": lambda x: x * 0.3,
    "dark x 0.1": lambda x: x * 0.1,
    "contrast x 0.3": lambda x: _mean(x) + (x - _mean(x)) * 0.3,
    "contrast x 0.15": lambda x: _mean(x) + (x - _mean(x)) * 0.15,
    "washed out x 0.3": lambda x: 255 - (255 - x) * 0.3,
    "gamma 2.5 (dark)": lambda x: 255 * (x / 255) ** 2.5,
    "bright x 2": lambda x: x * 2,
}


def changed(images: np.ndarray, change: str) -> np.ndarray:
    """uint8 faces after the named photometric change (rounded and clipped to 0..255)."""
    x = images.astype(np.float32)
    return np.clip(np.rint(CHANGES[change](x)), 0, 255).astype(np.uint8)


def accuracy_table(recognizers: dict[str, Recognizer], images: np.ndarray,
                   labels: np.ndarray, changes=tuple(CHANGES)) -> list[dict]:
    """One row per change: accuracy (%) per recognizer, and the share (%) of faces that
    the first recognizer lifts. One more row, "as recorded, lifted faces only": the faces
    it lifts without any change (the dataset's own low-contrast faces), and how many."""
    rows = []
    for change in changes:
        faces = changed(images, change)
        row, moved = {"change": change}, None
        for name, rec in recognizers.items():
            seen = rec.prepare(faces)  # once: what it scores, and which faces it lifts
            if moved is None:  # the first recognizer's
                moved = (seen != faces).reshape(len(faces), -1).any(1)
                row["lifted"] = float(moved.mean() * 100)
            correct = rec._probs(seen).argmax(1) == labels
            row[name] = float(correct.mean() * 100)
            if change == "as recorded":
                row[name, "lifted"] = float(correct[moved].mean() * 100) if moved.any() else None
        row["n_lifted"] = int(moved.sum())
        rows.append(row)
        print(f"  {change}: " + ", ".join(f"{k} {row[k]:.2f}" for k in recognizers),
              file=sys.stderr, flush=True)
    return rows


def photo_rows(recognizers: dict[str, Recognizer], photo: np.ndarray,
               changes=tuple(CHANGES)) -> list[dict]:
    """One row per change of a whole photo (uint8 H x W or H x W x 3): per recognizer, the
    faces it finds, left to right, each as (face as the model sees it, label, confidence)."""
    rows = []
    for change in changes:
        pixels = changed(photo[None], change)[0]
        row = {"change": change, "photo": pixels}
        for name, rec in recognizers.items():
            _, crops = rec.faces_in(load_image(pixels))
            seen = rec.prepare(crops)
            probs = rec._probs(seen)
            row[name] = [(face, rec.class_names[int(p.argmax())], float(p.max()))
                         for face, p in zip(seen, probs, strict=True)]
        rows.append(row)
    return rows


def draw_photo_rows(rows: list[dict], names: list[str], out: str) -> str:
    """A picture of `photo_rows`: a column per change, with the changed photo and below it
    each recognizer's first face as the model sees it, labelled and with its confidence."""
    from ferkit.metrics import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1 + len(names), len(rows), figsize=(1.7 * len(rows),
                                                                  2.0 * (1 + len(names))),
                             squeeze=False)
    for col, row in enumerate(rows):
        ax = axes[0, col]
        ax.imshow(row["photo"], cmap="gray", vmin=0, vmax=255)
        ax.set_title(row["change"], fontsize=9)
        for ax, name in zip(axes[1:, col], names, strict=True):
            if row[name]:
                face, label, confidence = row[name][0]
                ax.imshow(face, cmap="gray", vmin=0, vmax=255)
                ax.set_xlabel(f"{label} {100 * confidence:.0f}%", fontsize=9)
            else:
                ax.set_xlabel("no face found", fontsize=9)
    for ax, text in zip(axes[:, 0], ["photo", *names], strict=True):
        ax.set_ylabel(text, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return str(_save(fig, out))


def photo_main(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from ferkit import samples

    source = samples.path() if args.photo == "sample" else args.photo
    try:
        photo = load_image(source).pixels
    except (OSError, ValueError) as exc:
        ap.error(f"--photo: {exc}")
    if args.picture:
        from ferkit.metrics import _pyplot

        try:
            _pyplot()
        except ImportError as exc:
            ap.error(f"--picture: {exc}")
    recognizers = {"auto-contrast": Recognizer(args.model, backend=args.backend)}
    recognizers["as is"] = Recognizer(args.model, backend=args.backend, auto_contrast=False)
    rows = photo_rows(recognizers, photo)
    print(f"\n{source}, model {args.model or 'default'}, backend {args.backend}; each face "
          "found, left to right: label and confidence\n")
    print("| change | auto-contrast | as is |")
    print("|---|---|---|")
    for r in rows:
        cells = [", ".join(f"{label} {100 * c:.0f}%" for _, label, c in r[name]) or "no face"
                 for name in recognizers]
        print(f"| {r['change']} | {cells[0]} | {cells[1]} |")
    if args.picture:
        print(f"\npicture: {draw_photo_rows(rows, list(recognizers), args.picture)}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="a dataset any ferkit reader takes")
    ap.add_argument("--photo", nargs="?", const="sample", metavar="PATH",
                    help="instead of --data: a photo, recognised whole after each change "
                         "(default: the bundled sample)")
    ap.add_argument("--picture", metavar="OUT.png",
                    help="with --photo: draw the faces as the model sees them")
    ap.add_argument("--split", default="PublicTest", help="split to score (default PublicTest)")
    ap.add_argument("--model", default=None, help="weights name or checkpoint (default: shipped)")
    ap.add_argument("--backend", choices=BACKENDS, default="torch")
    ap.add_argument("--limit", type=whole_number(1), default=None, metavar="N",
                    help="score the first N faces only")
    args = ap.parse_args(argv)
    if (args.data is None) == (args.photo is None):
        ap.error("give one of --data and --photo")
    if args.picture and args.photo is None:
        ap.error("--picture draws --photo's faces: give --photo too")
    if args.photo is not None:
        photo_main(ap, args)
        return

    from ferkit.data import DataError
    from ferkit.evaluate import load_eval_data

    t0 = time.perf_counter()
    recognizers = {
        "auto-contrast": Recognizer(args.model, detector="none", backend=args.backend),
    }
    recognizers["as is"] = Recognizer(args.model, detector="none", backend=args.backend,
                                      auto_contrast=False)
    try:
        faces = load_eval_data(recognizers["as is"].meta, args.data)
        faces = faces.subset(args.split)
    except (DataError, OSError, ValueError) as exc:
        ap.error(str(exc))
    images, labels = faces.images[: args.limit], faces.labels[: args.limit]
    rows = accuracy_table(recognizers, images, labels)
    print(f"\n{args.split}, {len(images)} faces, model {args.model or 'default'}, backend "
          f"{args.backend}; accuracy %:\n")
    print("| change | auto-contrast | as is | faces lifted |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['change']} | {r['auto-contrast']:.2f} | {r['as is']:.2f} | "
              f"{r['lifted']:.0f} % |")
        if r["change"] == "as recorded" and r["n_lifted"]:
            print(f"| as recorded, lifted faces only ({r['n_lifted']}) | "
                  f"{r['auto-contrast', 'lifted']:.2f} | {r['as is', 'lifted']:.2f} | 100 % |")
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
