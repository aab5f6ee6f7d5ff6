"""Folder layouts of FER2013 (see ``load_folder``).

- a folder holding ``fer2013.csv`` (or ``.gz`` / ``.xz``) or ``icml_face_data.csv``, directly
  or in a ``fer2013/`` sub-folder;
- Kaggle's ``train.csv`` (Training rows, labelled) + ``test.csv`` (PublicTest then PrivateTest
  rows, pixels only);
- image folders ``train/<class>/*`` + ``test/<class>/{PublicTest,PrivateTest}_<n>.jpg``;
- image folders ``train/<class>/*`` + ``validation/<class>/*`` (a random re-split: warned);
- generic class folders ``<root>/<class>/*`` (split ``all``): FER2013's 7 classes when every
  folder is one of them (or an alias), else the folders' own names, sorted.

In every class-folder layout the images in sub-folders of a class folder are of its class, as
in torchvision's ``ImageFolder``.

Image folders do not keep the ICML row numbers, so FER+ cannot be joined to them (see
`ferkit.data.ferplus.joined_votes`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import readers
from .faceset import FER2013_CLASSES, IMAGE_EXTENSIONS, IMAGE_SIZE, SPLITS, DataError, FaceSet
from .fer2013 import read_fer2013_csv

CSV_NAMES = tuple(
    f"{stem}.csv{ext}" for stem in ("fer2013", "icml_face_data") for ext in ("", ".gz", ".xz")
)
#: Folder name (lower case) -> FER2013 class name.
CLASS_ALIASES: dict[str, str] = {
    **{name: name for name in FER2013_CLASSES},
    "anger": "angry",
    "disgusted": "disgust",
    "fearful": "fear",
    "happiness": "happy",
    "sadness": "sad",
    "surprised": "surprise",
}
#: Split folder name (lower case) -> split name ("test" takes it from the file-name prefix).
SPLIT_FOLDERS = {"train": "Training", "test": None, "validation": "validation", "val": "validation"}
TEST_PREFIX = re.compile(r"^(publictest|privatetest)_", re.IGNORECASE)
RESPLIT_WARNING = (
    "train/ + validation/ folders are a random re-split of FER2013 that mixes the ICML test "
    "images into training, so numbers on 'validation' are not comparable with the ICML "
    "PrivateTest (the protocol of published FER2013 results)"
)
PROGRESS_MIN_FILES = 1000
#: How many paths a note on ignored files names (the count is always complete).
NOTE_EXAMPLES = 3


def _accepted_classes() -> str:
    aliases = {
        c: sorted(a for a, n in CLASS_ALIASES.items() if n == c and a != c) for c in FER2013_CLASSES
    }
    return ", ".join(
        c + (f" ({'/'.join(aliases[c])})" if aliases[c] else "") for c in FER2013_CLASSES
    )


def _visible(entry: os.DirEntry | Path) -> bool:
    return not entry.name.startswith((".", "__"))


def _natural(name: str) -> tuple:
    """Natural order (``2.png`` before ``10.png``, case aside); names it cannot tell apart
    (``01``/``1``, ``A``/``a``) by the name itself, so no order is left to the file system."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)], name


@dataclass
class _Walk:
    """One read's walk through class folders: the dataset's real path, the folders walked
    (real paths), and the links not followed ("link -> target"; broken ones "(missing)")."""

    root: str
    walked: set[str] = field(default_factory=set)
    unfollowed: list[str] = field(default_factory=list)

    def refuses(self, path: Path, home: str) -> bool:
        """Whether ``path`` (a file or sub-folder of class folder ``home``, a real path)
        leads somewhere it must not: a folder walked already, one that holds its class
        folder (a loop), or into the dataset outside its class folder (another class's
        images, which would get this class's label). Noted when so."""
        real = os.path.realpath(path)
        bad = (real in self.walked or _inside(home, real)
               or (_inside(real, self.root) and not _inside(real, home)))
        if bad:
            self.unfollowed.append(f"{path} -> {real}")
        return bad


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


# ---- images ----


def read_image(path: str | os.PathLike) -> np.ndarray:
    """One image file as uint8 48 x 48 gray, decoded as `ferkit.Recognizer` decodes it
    (`ferkit.imagedecode`: EXIF orientation, 16-bit data by the bit depth it uses, alpha and
    palette transparency over white, any PIL mode) and made gray as its face crops are
    (ITU-R 601 luma, OpenCV's rounding); resized to 48 x 48 if it is not, as
    `ferkit.Recognizer.classify` resizes a crop (area averaging when shrinking, bilinear
    when enlarging)."""
    from PIL import Image

    from ..imagedecode import decode_pil, resize, to_gray

    path = Path(path)
    try:
        with Image.open(path) as im:
            pixels, _ = decode_pil(im, owned=True)
        gray = resize(to_gray(pixels), IMAGE_SIZE, IMAGE_SIZE)
        return np.array(gray, dtype=np.uint8)  # a writable copy, not PIL's memory
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


def _progress(items: list, desc: str):
    if len(items) < PROGRESS_MIN_FILES or not sys.stderr.isatty():
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit="img", file=sys.stderr, leave=False)


# ---- cache ----


def _folder_key(root: Path, files: list[Path], extra: dict) -> str:
    """Cache key: folder, layout, file count, names, total size and newest modification time
    (and, in ``extra``, the reader's version; for image folders the image decoding's)."""
    newest, size = root.stat().st_mtime_ns, 0
    names = hashlib.sha1()
    for f in files:
        st = f.stat()
        newest, size = max(newest, st.st_mtime_ns), size + st.st_size
        names.update(str(f.relative_to(root)).encode() + b"\0")
    for d in {f.parent for f in files}:  # a file moved or deleted changes its folder's mtime
        newest = max(newest, d.stat().st_mtime_ns)
    ident = json.dumps(
        [
            readers.CACHE_VERSION,
            "folder",
            str(root.resolve()),
            len(files),
            newest,
            size,
            names.hexdigest(),
            extra,
        ],
        sort_keys=True,
    )
    return hashlib.sha1(ident.encode()).hexdigest()[:20]


def _decoding_version() -> int:
    """`ferkit.imagedecode.DECODING_VERSION`, for image folders' cache keys (imported when a
    folder of images is read: it imports PIL)."""
    from ..imagedecode import DECODING_VERSION

    return DECODING_VERSION


def _cached(root: Path, files: list[Path], extra: dict, cache: bool, build) -> FaceSet:
    """A folder's read, from the cache where it holds one. The notes name the folder as this
    call names it (a read cached under another spelling of the path says it this way)."""
    key = _folder_key(root, files, extra)
    if cache and (hit := readers._read_cached(root, key)) is not None:
        then = hit.info.get("notes_root")
        if then is not None and then != str(root) and hit.info.get("notes"):
            hit.info["notes"] = [str(root) + n[len(then):] if n.startswith(then + ":") else n
                                 for n in hit.info["notes"]]
            hit.info["notes_root"] = str(root)
        return hit
    faces = build()
    faces.info["notes_root"] = str(root)
    if cache:
        readers._write_cache(faces, key)
    return faces


# ---- layouts ----


def load_folder(path: str | os.PathLike, skip_bad: bool = False, cache: bool = True) -> FaceSet:
    """Detect the layout of a FER2013 folder and read it (``info["layout"]`` says which).

    With ``skip_bad`` a bad CSV row or unreadable image is left out and reported in
    ``info["skipped"]`` (`ferkit.data.load` prints them); without it, it is a `DataError`
    naming the file. Reads are cached like the CSVs (see `ferkit.data.readers.cache_dir`).
    """
    _, read = _layout(Path(path), skip_bad, cache)
    return read()


def dataset_files(path: str | os.PathLike) -> list[Path]:
    """The files `ferkit.data.load` reads for `path`, without reading them: `path` itself
    for a file; for a folder those of its layout (its CSV, train.csv + test.csv, or the
    images of its class folders). A folder of no known layout is the `DataError` that
    `load_folder` gives."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    files, _ = _layout(path, skip_bad=False, cache=False)
    return files


def _layout(root: Path, skip_bad: bool, cache: bool) -> tuple[list[Path], Callable[[], FaceSet]]:
    """``(files, read)``: the files the layout of folder `root` reads, and what reads them."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    entries = [e for e in os.scandir(root) if _visible(e)]
    if not entries:
        raise DataError(f"{root}: empty folder, no FER2013 data in it")
    files = {e.name.lower(): Path(e.path) for e in entries if e.is_file()}
    dirs = {e.name.lower(): Path(e.path) for e in entries if e.is_dir()}

    # 1. the ICML CSV (or icml_face_data.csv), here or in fer2013/
    for folder_files in (files, _files_of(dirs.get("fer2013"))):
        for name in CSV_NAMES:
            if name in folder_files:
                csv_path = folder_files[name]

                def read_csv(csv_path: Path = csv_path) -> FaceSet:
                    faces = readers.load_csv(csv_path, skip_bad=skip_bad, cache=cache)
                    faces.info = {**faces.info, "folder": str(root)}
                    return faces

                return [csv_path], read_csv
    # 2. Kaggle train.csv + test.csv
    if "train.csv" in files and "test.csv" in files:
        train, test = files["train.csv"], files["test.csv"]
        # reader 2: the split assumption is a note (a cache entry of before is read again)
        return [train, test], lambda: _cached(
            root,
            [train, test],
            {"layout": "kaggle", "skip_bad": skip_bad, "reader": 2},
            cache,
            lambda: _read_kaggle(root, train, test, skip_bad),
        )
    if "train.csv" in files or "test.csv" in files:
        have, need = (
            ("train.csv", "test.csv") if "train.csv" in files else ("test.csv", "train.csv")
        )
        raise DataError(f"{root}: has Kaggle's {have} but not {need}; the layout needs both")
    # 3./4. split folders train/ + test/ and/or validation/
    walk = _Walk(os.path.realpath(root))
    if "train" in dirs:
        others = sorted(n for n in dirs if n not in SPLIT_FOLDERS)
        present = [n for n in SPLIT_FOLDERS if n in dirs]
        if others or len(present) < 2:
            raise DataError(
                f"{root}: has train/ but "
                + (f"also unexpected folders {others}" if others else "no test/ or validation/")
                + "; expected train/ + test/ (ICML splits) or train/ + validation/"
            )
        if "validation" in dirs and "val" in dirs:
            raise DataError(f"{root}: has both validation/ and val/; keep one")
        items, ignored = [], []
        for name in present:
            items += _class_folder_items(dirs[name], SPLIT_FOLDERS[name], ignored, walk)
        layout = "image-folders-train-" + "-".join(
            "validation" if n == "val" else n for n in present if n != "train"
        )
        extra = {"layout": layout}
        if "validation" in dirs or "val" in dirs:
            extra["resplit_warning"] = RESPLIT_WARNING
    # 5. generic class folders: FER2013's classes (in its order, so that the shipped weights'
    # head fits) where every folder is one, else the folders' own (a user's class set)
    elif dirs and all(n in CLASS_ALIASES for n in dirs):
        ignored = []
        items = _class_folder_items(root, "all", ignored, walk)
        extra = {"layout": "class-folders"}
    elif dirs:
        classes = _own_classes(root, entries, dirs)
        ignored = []
        items = _class_folder_items(root, "all", ignored, walk, classes)
        extra = {"layout": "class-folders", "class_names": classes}
    else:
        raise DataError(
            f"{root}: no FER2013 data found (looked for fer2013.csv[.gz|.xz], "
            "icml_face_data.csv, train.csv + test.csv, train/ + test/ or validation/ class "
            f"folders, or class folders); it holds {sorted(files)[:10]}"
        )
    if walk.unfollowed:
        extra["unfollowed_links"] = walk.unfollowed
    if not items:
        raise DataError(f"{root}: no images in the class folders ({extra['layout']} layout)")
    paths = [p for p, _, _ in items]
    # reader 2: class folders are read with their sub-folders (entries of before: read again);
    # decoding: images decoded otherwise before (`ferkit.imagedecode`) are read again too
    return paths, lambda: _cached(
        root,
        paths,
        {**extra, "skip_bad": skip_bad, "reader": 2, "decoding": _decoding_version()},
        cache,
        lambda: _read_images(root, items, extra, ignored, skip_bad),
    )


def _own_classes(root: Path, entries: list[os.DirEntry], dirs: dict[str, Path]) -> list[str]:
    """The folder names as the classes, sorted as torchvision's ImageFolder sorts them."""
    splits = sorted(n for n in dirs if n in SPLIT_FOLDERS)
    if splits:  # test/ or validation/ without train/: a split layout, not classes
        raise DataError(
            f"{root}: has {'/, '.join(splits)}/ but no train/; expected train/ + test/ (ICML "
            "splits), train/ + validation/, or class folders"
        )
    classes = sorted(e.name for e in entries if e.is_dir())
    if len(classes) < 2:
        raise DataError(
            f"{root}: one folder {classes[0]!r}, which is not a FER2013 class; class folders "
            f"need two or more classes (FER2013's: {_accepted_classes()}). Other accepted "
            "layouts: fer2013.csv[.gz|.xz], icml_face_data.csv, train.csv + test.csv, "
            "train/ + test/, train/ + validation/"
        )
    return classes


def _files_of(folder: Path | None) -> dict[str, Path]:
    if folder is None:
        return {}
    return {e.name.lower(): Path(e.path) for e in os.scandir(folder) if e.is_file()}


def _class_folder_items(
    folder: Path, split: str | None, ignored: list[str], walk: _Walk,
    classes: list[str] | None = None,
) -> list[tuple[Path, int, str | None]]:
    """(file, label, split or None for 'from the test prefix') for ``folder/<class>/**``.

    ``classes``: the class names, label = position; None: FER2013's, by `CLASS_ALIASES`.
    As in torchvision's ``ImageFolder``, the images in the sub-folders of a class folder, at
    any depth and through links, are of that class (see `_images_under` for the order); the
    non-image files met on the way are appended to ``ignored`` (files only, never folders).
    Two class folders that are one folder (through a link) are an error; a link inside one
    that leads elsewhere in the dataset is not followed (``walk`` notes it).
    """
    homes: dict[str, str] = {}
    for entry in os.scandir(folder):
        if _visible(entry) and entry.is_dir():
            real = os.path.realpath(entry.path)
            for other, other_real in homes.items():
                if _inside(real, other_real) or _inside(other_real, real):
                    raise DataError(
                        f"{entry.path} and {other} are the same folder, or one holds the "
                        f"other (through a link: {real}, {other_real}); each class needs a "
                        "folder of its own"
                    )
            homes[entry.path] = real
    items = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not _visible(entry):
            continue
        if not entry.is_dir():
            ext = os.path.splitext(entry.name)[1].lower()
            if ext in IMAGE_EXTENSIONS:  # an image outside any class folder has no label
                items.append((Path(entry.path), -2, split))
            else:
                ignored.append(entry.path)
            continue
        if classes is not None:
            label = classes.index(entry.name)
        else:
            cls = CLASS_ALIASES.get(entry.name.lower())
            if cls is None:
                raise DataError(
                    f"{entry.path}: unknown class folder {entry.name!r}; accepted names: "
                    f"{_accepted_classes()}"
                )
            label = FER2013_CLASSES.index(cls)
        items += [(f, label, split)
                  for f in _images_under(Path(entry.path), ignored, walk, homes[entry.path],
                                         top=True)]
    return items


def _images_under(
    folder: Path, ignored: list[str], walk: _Walk, home: str, top: bool = False
) -> list[Path]:
    """The image files (by extension) in `folder` (class folder ``home``, a real path, or a
    sub-folder of it) and its sub-folders, at any depth: each folder's files in natural name
    order (``2.png`` before ``10.png``), then its sub-folders in that order (real folders
    before links), one after the other. Hidden entries (``.*``, ``__*``) are skipped; other non-image files go to
    `ignored`. Links are followed, but not where `_Walk.refuses` them: to a folder walked
    already, to one above, or elsewhere in the dataset (noted)."""
    real = os.path.realpath(folder)
    if top:  # a class folder (`home`): one read already, or in one, is another split's
        seen = next((w for w in walk.walked if _inside(real, w) or _inside(w, real)), None)
        if seen is not None:
            raise DataError(f"{folder}: is {seen}, read already for another split, or holds "
                            "it or is in it (through a link); each split needs folders of "
                            "its own")
    elif walk.refuses(folder, home):
        return []
    walk.walked.add(real)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: _natural(e.name))
    except OSError as exc:
        raise DataError(f"{folder}: cannot list this folder ({exc.strerror or exc})") from None
    images, subfolders = [], []
    for f in entries:
        if not _visible(f):
            continue
        if f.is_dir():
            subfolders.append(Path(f.path))
        elif os.path.splitext(f.name)[1].lower() in IMAGE_EXTENSIONS:
            if f.is_symlink() and (not os.path.exists(f.path) or walk.refuses(Path(f.path), home)):
                if not os.path.exists(f.path):  # a broken link
                    walk.unfollowed.append(f"{f.path} -> {os.readlink(f.path)} (missing)")
                continue
            images.append(Path(f.path))  # one that cannot be read is reported by the reader
        else:
            ignored.append(f.path)
    # real folders before links, so that a link to one of them is the one not followed
    for sub in sorted(subfolders, key=lambda s: s.is_symlink()):  # stable: natural order
        images += _images_under(sub, ignored, walk, home)
    return images


def _read_images(
    root: Path,
    items: list[tuple[Path, int, str | None]],
    extra: dict,
    ignored: list[str],
    skip_bad: bool,
) -> FaceSet:
    order = {s: i for i, s in enumerate(SPLITS)}
    rows, skipped = [], []
    for path, label, split in _progress(items, desc=f"reading {root.name}"):
        try:
            if label == -2:
                raise DataError(f"{path}: image outside any class folder, so it has no label")
            if split is None:  # test/: the ICML split is in the file name
                m = TEST_PREFIX.match(path.name)
                if m is None:
                    raise DataError(
                        f"{path}: a test/ image name must start with PublicTest_ or "
                        "PrivateTest_ (its ICML split is not known otherwise)"
                    )
                split = "PublicTest" if m.group(1).lower() == "publictest" else "PrivateTest"
            rows.append((order.get(split, len(order)), split, label, path, read_image(path)))
        except DataError as exc:
            if not skip_bad:
                raise
            skipped.append(str(exc))
    if not rows:
        raise DataError(f"{root}: no readable images ({len(skipped)} skipped)")
    rows.sort(key=lambda r: r[:1] + r[2:3])  # Training, PublicTest, PrivateTest, others; class
    class_names = extra.get("class_names", FER2013_CLASSES)
    # The rows are numbered 0..N-1 in this order, not as in the ICML file; nor do the numbers
    # in test/ file names give the row (public copies name them e.g. PrivateTest_10613684.jpg,
    # far past the 35,887 rows). So FER+ cannot be joined here (icml_rows False).
    info = {
        **{k: v for k, v in extra.items() if k != "class_names"},
        "canonical": None,
        "icml_rows": False,
        "num_files": len(items),
    }
    notes = []
    if "class_names" in extra:
        others = [c for c in class_names if c.lower() not in CLASS_ALIASES]
        notes.append(
            f"{root}: class folder(s) {others} are not FER2013 classes, so the classes are "
            f"the folder names themselves, sorted: {list(class_names)}"
        )
    if ignored:
        info["ignored"] = ignored
        more = ", ..." if len(ignored) > NOTE_EXAMPLES else ""
        notes.append(
            f"{root}: ignored {len(ignored)} non-image file(s) in the class folders: "
            + ", ".join(ignored[:NOTE_EXAMPLES]) + more
        )
    links = extra.get("unfollowed_links", [])
    if links:
        more = ", ..." if len(links) > NOTE_EXAMPLES else ""
        notes.append(
            f"{root}: did not follow {len(links)} link(s) in the class folders that lead to "
            "nothing, to a folder read already, to one above, or elsewhere in the dataset "
            "(whose images would get the wrong class): " + ", ".join(links[:NOTE_EXAMPLES]) + more
        )
    if notes:
        info["notes"] = notes
    if skipped:
        info["skipped"] = skipped
    return FaceSet(
        images=np.stack([r[4] for r in rows]),
        labels=np.array([r[2] for r in rows]),
        splits=np.array([r[1] for r in rows]),
        class_names=class_names,
        source=str(root),
        info=info,
    )


def _read_kaggle(root: Path, train: Path, test: Path, skip_bad: bool) -> FaceSet:
    tr = read_fer2013_csv(train, skip_bad=skip_bad, default_split="Training")
    te = read_fer2013_csv(test, skip_bad=skip_bad, default_split="PublicTest")
    tr_skipped, te_skipped = tr.info.get("skipped", []), te.info.get("skipped", [])
    info = {
        "layout": "kaggle-train-test-csv",
        "canonical": None,
        "md5": {"train.csv": tr.info["md5"], "test.csv": te.info["md5"]},
        # Rows are numbered as in the ICML file (train.csv then test.csv), so FER+ joins by index.
        "icml_rows": True,
    }
    n_train, n_test = len(tr) + len(tr_skipped), len(te) + len(te_skipped)
    info["file_rows"] = n_train + n_test
    te_index = te.index + n_train
    te_splits = te.splits
    columns = [c.lower() for c in te.info.get("columns", [])]
    if "usage" not in columns:
        half = n_test // 2
        te_splits = np.where(te.index < half, "PublicTest", "PrivateTest")
        info["split_assumption"] = (
            f"test.csv has no Usage column: its first {half} rows are taken as PublicTest and "
            f"the other {n_test - half} as PrivateTest (the ICML order, 3589 + 3589 in the "
            "original); "
            + ("its labels are read from its emotion column" if "emotion" in columns else
               "it has no emotion column, so its labels are unknown (-1)")
            + ("; ODD row count, so the halves cannot be the ICML ones" if n_test % 2 else "")
        )
        # a note, so that every read says it (ferkit.data.load prints notes; data check too)
        info["notes"] = [f"{root}: {info['split_assumption']}"]
    if tr_skipped or te_skipped:
        info["skipped"] = tr_skipped + te_skipped
    return FaceSet(
        images=np.concatenate([tr.images, te.images]),
        labels=np.concatenate([tr.labels, te.labels]),
        splits=np.concatenate([tr.splits, te_splits]),
        index=np.concatenate([tr.index, te_index]),
        source=str(root),
        info=info,
    )


__all__ = ["CLASS_ALIASES", "RESPLIT_WARNING", "dataset_files", "load_folder", "read_image"]
