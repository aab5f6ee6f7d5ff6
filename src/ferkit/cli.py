"""The ``ferkit`` command."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_train(args: argparse.Namespace) -> int:
    from .recipe import Recipe
    from .train import check_out_folder, fit, refuse_resume_with_init, run_recipe

    # before the run's own recipe is read (and before any work; `fit` checks them too)
    check_out_folder(args.out)
    refuse_resume_with_init(args.resume, args.init_from, args.out)
    if args.recipe is not None:
        recipe = Recipe.from_yaml(args.recipe, args.set)
    elif args.resume:
        recipe = run_recipe(args.out, args.set)  # the run's own, with --set on top
    else:
        raise ValueError("--recipe is needed to train (only --resume continues the run in "
                         "--out with its own recipe)")
    summary = fit(
        recipe, args.data, args.out, device=args.device, resume=args.resume,
        max_minutes=args.max_minutes, init_from=args.init_from,
    )
    if summary.get("world_size", 1) == 1 or int(__import__("os").environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    report = evaluate(  # checks --out before loading or scoring anything
        args.checkpoint, args.data, split=args.split, tta=args.tta, device=args.device,
        out=args.out, ferplus=args.ferplus, backend=args.backend,
    )
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['model']} on {report['split']} ({report['num_samples']} images, "
          f"TTA {report['tta']}): accuracy {report['accuracy']:.4f}, macro-F1 "
          f"{report['macro_f1']:.4f}, ECE {report['ece']:.4f}")
    print(f"{'class':<12} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}")
    for name, c in report["per_class"].items():
        print(f"{name:<12} {c['precision']:>9.3f} {c['recall']:>7.3f} {c['f1']:>6.3f} "
              f"{c['support']:>8}")
    if report.get("absent_classes"):
        print(f"macro-F1 averages the classes present or predicted; no {report['split']} "
              "images of: "
              f"{', '.join(report['absent_classes'])}")
    if args.out:
        print(f"report written to {args.out}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import reproduce, table_from_runs

    if args.runs:
        ignored = [flag for flag, value in (("--seeds", args.seeds), ("--set", args.set),
                                            ("--max-minutes", args.max_minutes)) if value]
        if ignored:
            raise ValueError(f"reproduce --runs scores runs trained already; {', '.join(ignored)} "
                             "only apply to training (--recipes): leave them out, or train "
                             "with --recipes")
        table = table_from_runs(args.runs, args.data, args.out, tta=args.tta, device=args.device,
                                ferplus=args.ferplus, backend=args.backend)
    else:
        table = reproduce(args.recipes, args.data, args.out, overrides=args.set,
                          device=args.device, max_minutes=args.max_minutes,
                          ferplus=args.ferplus, seeds=args.seeds, tta=args.tta,
                          backend=args.backend)
    print(table.read_text(), end="")
    return 0


def _pack_out(out: str, data: str):
    """``--out`` of ``data pack`` checked before any work: a file, not a folder, writable, and
    not the dataset itself nor one of the files it is read from (also through a link)."""
    import os

    from .data.folders import dataset_files
    from .fileio import output_file

    keep = [data]
    if os.path.isfile(out) and os.path.isdir(data):
        # only a file that exists can be one of the inputs: the one it is, by name or link
        keep += [f for f in dataset_files(data) if os.path.exists(f) and os.path.samefile(f, out)]
    return output_file(out, "--out", keep)


def _cmd_data_pack(args: argparse.Namespace) -> int:
    from .data import DataError, load
    from .fileio import no_folders_left_on_failure

    with no_folders_left_on_failure(files=[args.out]):  # a failed read leaves none behind
        out = _pack_out(args.out, args.path)
        faces = load(args.path)
        splits = [s.strip() for s in args.splits.split(",") if s.strip()]
        if not splits:  # a 0-image pack would only fail later, on the training machine
            raise DataError(
                f"{args.path}: --splits {args.splits!r} names no split; it has "
                f"{','.join(faces.split_names)}"
            )
        packed = faces.subset(splits)  # a split it does not have is an error there
        path = packed.save_pack(out)
    size = path.stat().st_size
    print(f"packed {len(packed)} images ({', '.join(splits)}) into {path} "
          f"({size / 2**20:.1f} MiB)")
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from .data import load, load_ferplus
    from .data.check import check_report, format_check

    faces = load(args.path, skip_bad=args.skip_bad)
    if args.ferplus:  # the class table of the FER+ majority labels, and what they drop
        from .data.ferplus import find_ferplus_votes  # a bare name beside the data too

        faces = load_ferplus(faces, find_ferplus_votes(args.ferplus, args.path))
    report = check_report(faces)
    print(json.dumps(report, indent=2) if args.json else format_check(report))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .weights import weights_table

    if args.weights:
        rows = weights_table()
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        datasets = {"fer2013": "FER2013", "ferplus": "FER+"}
        print(f"{'weights':<18} {'model':<9} {'classes':<14} test accuracy: single crop / flip "
              "/ ten-crop")
        for r in rows:
            classes = f"{len(r['class_names'])} ({datasets.get(r['dataset'], r['dataset'])})"
            acc = " / ".join(f"{100 * r['test_accuracy'][m]:.2f}%" if m in r["test_accuracy"]
                             else "-" for m in ("none", "flip", "ten-crop"))
            split = ("FERTest" if r["dataset"] == "ferplus" and r["test_split"] == "PrivateTest"
                     else r["test_split"])  # FER+'s name of FER2013's PrivateTest
            print(f"{r['name']:<18} {r['model']:<9} {classes:<14} {acc} on {split}"
                  + ("  (the default)" if r["default"] else ""))
        return 0
    from .models.info import model_table

    rows = model_table()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'model':<18} {'params':>12} {'GMACs':>8}  description")
        for r in rows:
            print(f"{r['name']:<18} {r['params']:>12,} {r['gmacs']:>8.3f}  {r['description']}")
        names = [r["name"] + (" (the default)" if r["default"] else "") for r in weights_table()]
        print(f"\nshipped weights: {', '.join(names) or 'none in this copy'}; `ferkit models "
              "--weights` for their classes and test accuracy")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .argtypes import BACKENDS, TTA_MODES, number, recipe_names

    p = argparse.ArgumentParser(prog="ferkit", description="Facial expression recognition.")
    p.add_argument("--version", action="version", version=f"ferkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a recipe")
    t.add_argument("--recipe", default=None,
                   help="a recipe that ships with ferkit by name ("
                   + ", ".join(recipe_names())
                   + ") or the path of a YAML recipe (with --resume: default the run's own, "
                   "with --set on top)")
    t.add_argument("--data", required=True, help="dataset path (any layout FaceSet.load reads)")
    t.add_argument("--out", required=True, help="run folder for checkpoints and logs")
    t.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override recipe keys, e.g. epochs=1 batch_size=128 augment.erasing=0.5")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out exactly (its own recipe unless --recipe "
                   "is given; --set epochs=N lengthens it, plus time_budget_minutes=null for a "
                   "run whose time budget is spent)")
    t.add_argument("--max-minutes", type=number(0, open_low=True), default=None,
                   help="stop cleanly (with a checkpoint) after an epoch where another as long would "
                   "end past this many minutes of the call (at least one epoch is trained)")
    t.add_argument("--init-from", default=None, metavar="MODEL",
                   help="weights to fine-tune from: shipped weights by name (mba_cnn-fer2013), "
                   "a checkpoint or a run folder, as predict --model takes")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="score a checkpoint on a split")
    e.add_argument("--checkpoint", required=True, metavar="MODEL",
                   help="shipped weights by name (mba_cnn-fer2013), a checkpoint path (with or "
                   "without suffix) or a run folder (its best checkpoint)")
    e.add_argument("--data", required=True, help="dataset path (any layout FaceSet.load reads)")
    e.add_argument("--split", default="PrivateTest")
    e.add_argument("--tta", default="none", choices=TTA_MODES)
    e.add_argument("--device", default="auto")
    e.add_argument("--out", default=None, help="folder for JSON, PNG plots and report.md")
    e.add_argument("--ferplus", default=None, help="fer2013new.csv for FER+ checkpoints")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--backend", default="torch", choices=BACKENDS,
                   help="onnx: onnxruntime on the CPU, faster there (needs ferkit[export])")
    e.set_defaults(func=_cmd_eval)

    rp = sub.add_parser("reproduce", help="train recipes, score PrivateTest once, write a table")
    what = rp.add_mutually_exclusive_group(required=True)
    what.add_argument("--recipes", nargs="+",
                      help="recipes to train: shipped names (paper, best, ...) or YAML files")
    what.add_argument("--runs", nargs="+", help="finished run folders to score and tabulate")
    rp.add_argument("--seeds", nargs="+", type=int, default=None,
                    help="train each recipe once per seed (runs NAME-sSEED)")
    rp.add_argument("--tta", default="ten-crop", choices=[m for m in TTA_MODES if m != "none"],
                    help="the TTA column (single-crop is always scored)")
    rp.add_argument("--backend", default="torch", choices=BACKENDS,
                    help="what scores PrivateTest; onnx is faster on a CPU (ferkit[export])")
    rp.add_argument("--data", required=True, help="the full dataset (PrivateTest is scored)")
    rp.add_argument("--out", required=True)
    rp.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    rp.add_argument("--device", default="auto")
    rp.add_argument("--max-minutes", type=number(0, open_low=True), default=None,
                    help="per run (a run cut short resumes on the next call)")
    rp.add_argument("--ferplus", default=None, help="fer2013new.csv for FER+ recipes")
    rp.set_defaults(func=_cmd_reproduce)

    d = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command",
                                                                   required=True)
    pk = d.add_parser("pack", help="write a compact compressed copy of some splits")
    pk.add_argument("path")
    pk.add_argument("--splits", default="Training,PublicTest")
    pk.add_argument("--out", required=True)
    pk.set_defaults(func=_cmd_data_pack)
    ck = d.add_parser("check", help="per-split class table and exact-duplicate analysis")
    ck.add_argument("path")
    ck.add_argument("--json", action="store_true")
    ck.add_argument("--skip-bad", action="store_true", help="report and skip malformed rows")
    ck.add_argument("--ferplus", default=None, metavar="FER2013NEW_CSV",
                    help="join FER+ votes (fer2013new.csv) and check the FER+ majority labels")
    ck.set_defaults(func=_cmd_data_check)

    m = sub.add_parser("models", help="list the registered models and the shipped weights")
    m.add_argument("--weights", action="store_true",
                   help="list the shipped weights (--model NAME of the recognising commands) "
                   "with their classes and test accuracy")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=_cmd_models)

    # the parser modules import nothing heavy (torch, OpenCV, ...): the commands import that
    from .explain_cli import add_parsers as add_explain_parsers
    from .export_cli import add_parsers as add_export_parsers
    from .predict_cli import add_parsers as add_predict_parsers
    from .serve.cli import add_parsers as add_serve_parsers
    from .video_cli import add_parsers as add_video_parsers

    add_predict_parsers(sub)
    add_video_parsers(sub)
    add_explain_parsers(sub)
    add_export_parsers(sub)
    add_serve_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .data import DataError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # e.g. `ferkit data check --json | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:  # Ctrl+C, e.g. while a model loads
        print("ferkit: interrupted", file=sys.stderr)
        return 130
    except (DataError, ValueError, OSError, ImportError) as exc:
        # ImportError: an optional extra missing (its message names the pip install);
        # OSError: a file that cannot be read or written (a folder, no permission, ...)
        print(f"ferkit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
