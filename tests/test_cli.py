"""The ``ferkit`` command's parser: help and usage errors answer without the heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "cv2", "matplotlib", "onnx", "onnxruntime", "fastapi")

# Every command's help, through `main` (as the console script runs it) and the parser itself,
# and a usage error; then which heavy modules got imported, as JSON on the last line.
_PROBE = f"""
import argparse, contextlib, io, json, sys
from ferkit.cli import build_parser, main

def helps(parser):
    yield parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from helps(sub)

texts = list(helps(build_parser()))
codes = []
for argv in (["--help"], ["export", "--help"], ["export", "--out", "m.onnx", "--opset", "5"],
             ["video"], ["nosuch"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(argv)
        except SystemExit as exc:
            codes.append(exc.code)
print(json.dumps({{"helps": len(texts), "codes": codes,
                  "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
"""


def test_help_and_usage_errors_import_nothing_heavy(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["heavy"] == []
    assert result["helps"] >= 14  # ferkit, its 11 commands, data pack and data check
    assert result["codes"] == [0, 0, 2, 2, 2]
    assert not (tmp_path / "m.onnx").exists()


def test_ferkit_help_exits_0():
    proc = subprocess.run(
        [sys.executable, "-m", "ferkit", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ferkit") and "export" in proc.stdout


def test_public_names_and_dir():
    import ferkit

    names = dir(ferkit)
    for name in ("Recognizer", "FaceSet", "Recipe", "fit", "create_model", "load_model",
                 "models", "train", "__version__"):
        assert name in names, name
    assert not [n for n in names if n.startswith("_") and n != "__version__"]
    assert "TYPE_CHECKING" not in names and "annotations" not in names
    assert ferkit.fit.__module__ == "ferkit.train" and ferkit.Recipe.__module__ == "ferkit.recipe"


def test_package_names_are_lazy():
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, ferkit; print('torch' in sys.modules); "
         "from ferkit import Face, FaceSet, Recognizer, create_model, list_models, load_model; "
         "print(Recognizer.__module__, FaceSet.__module__, load_model.__module__, "
         "'mba_cnn' in list_models(), ferkit.__version__, ferkit.models.__name__)"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "False"
    assert lines[1].split() == [
        "ferkit.recognize", "ferkit.data.faceset", "ferkit.weights", "True", "0.1.0",
        "ferkit.models",
    ]


def test_train_help_names_every_shipped_recipe():
    from ferkit.cli import build_parser
    from ferkit.recipe import list_recipes

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    help_text = "".join(train.format_help().split())  # wrapped anywhere, even at hyphens
    names = list_recipes()
    assert {"paper", "best", "finetune"} <= set(names)
    assert "".join(f"byname({', '.join(names)})".split()) in help_text
