"""Per model: parameters, GMACs, CPU inference images/s (batch 1 and 64), training images/s.

The MBA-CNN rows compare ferkit's inference path (eval mode, ``torch.inference_mode``,
channels_last) with a straightforward eager one (contiguous NCHW, ``torch.no_grad``),
measured in the same run.

    PYTHONPATH=src python benchmarks/models.py [--models mba_cnn resnet18] [--seconds 3]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ferkit.argtypes import number, whole_number
from ferkit.models import create_model, list_models
from ferkit.models.info import count_macs, count_params


def rate(fn, batch: int, seconds: float) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n * batch / (time.perf_counter() - t0)


def inference_rate(model, batch: int, seconds: float, fast: bool) -> float:
    x = torch.randn(batch, 1, 48, 48)
    if fast:
        m = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

        def fn():
            with torch.inference_mode():
                m(x)
    else:
        m = model.to(memory_format=torch.contiguous_format)

        def fn():
            with torch.no_grad():
                m(x)

    return rate(fn, batch, seconds)


def training_rate(model, batch: int, seconds: float) -> float:
    model.train().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(batch, 1, 48, 48).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (batch,))

    def fn():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return rate(fn, batch, seconds)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list_models(), choices=list_models(),
                    metavar="MODEL", help=f"models to time (default: all: {', '.join(list_models())})")
    ap.add_argument("--seconds", type=number(0, open_low=True), default=3.0,
                    help="timed seconds per measurement")
    ap.add_argument("--threads", type=whole_number(1), default=torch.get_num_threads(),
                    help="torch CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, CPU, fp32")
    print("| model | params | GMACs | infer b1 eager | infer b1 ferkit | infer b64 eager | "
          "infer b64 ferkit | train b64 |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        model = create_model(name).eval()
        cols = [inference_rate(model, b, args.seconds, fast) for b in (1, 64) for fast in (False, True)]
        train = training_rate(create_model(name), 64, args.seconds)
        print(f"| {name} | {count_params(model):,} | {count_macs(model) / 1e9:.3f} | "
              + " | ".join(f"{c:,.0f}" for c in cols) + f" | {train:,.1f} |", flush=True)


if __name__ == "__main__":
    main()
