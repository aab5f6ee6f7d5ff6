"""Training throughput per model: images/s, ms per step, epoch time and peak memory.

Each step is the real one of `ferkit.train` (`ferkit.step.TrainStep`): index a uint8 batch
on the device, augment it there, forward and backward under bf16 autocast (CUDA) in
channels_last, optimizer step; with ``--cuda-graph`` also that step replayed as a CUDA graph.
With ``--profile`` it also splits a step into augmentation / forward+backward / optimizer
and prints the profiler's top kernels.

    PYTHONPATH=src python benchmarks/train_speed.py --models mba_cnn --batch-sizes 64 256
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
import torch.nn.functional as F

from ferkit.argtypes import number, whole_number
from ferkit.augment import AugmentConfig
from ferkit.models import create_model, list_models
from ferkit.recipe import COMPILE_MODES, GRAPHING_COMPILE_MODES
from ferkit.step import WARMUP_STEPS, TrainStep

FER2013_TRAIN = 28709


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model, data, labels, batch, device, amp, gen, cfg, cuda_graph=False):
    """The trainer's own step (`ferkit.step.TrainStep`) with fused Adam on a GPU."""
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, **fused)

    def loss_fn(logits, targets):
        return F.cross_entropy(logits.float(), targets)

    train_step = TrainStep(model, opt, data, labels, None, cfg, gen, loss_fn, 7, batch,
                           amp=amp, cuda_graph=cuda_graph)

    def step():
        train_step(torch.randint(len(data), (batch,), device=device, generator=gen), 1e-3)

    step.train_step = train_step
    return step


def time_steps(step, device, seconds: float, min_steps: int = 5) -> tuple[int, float]:
    for _ in range(WARMUP_STEPS + 2):  # a graph is recorded after the warm-up steps
        step()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while n < min_steps or time.perf_counter() - t0 < seconds:
        step()
        n += 1
    sync(device)
    return n, time.perf_counter() - t0


def split_step(train_step: TrainStep, batch: int, reps: int = 20) -> dict:
    """Milliseconds spent in augmentation, forward+backward and optimizer (synchronised)."""
    data, device, gen = train_step.images, train_step.device, train_step.gen
    parts = {"augment": 0.0, "fwd+bwd": 0.0, "optimizer": 0.0}
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        x, targets, _ = train_step.batch(
            torch.randint(len(data), (batch,), device=device, generator=gen))
        sync(device)
        t1 = time.perf_counter()
        train_step.opt.zero_grad(set_to_none=True)
        train_step.forward_backward(x, targets)
        sync(device)
        t2 = time.perf_counter()
        train_step.opt.step()
        sync(device)
        t3 = time.perf_counter()
        parts["augment"] += t1 - t0
        parts["fwd+bwd"] += t2 - t1
        parts["optimizer"] += t3 - t2
    return {k: 1000 * v / reps for k, v in parts.items()}


def parse_device(ap: argparse.ArgumentParser, text: str) -> torch.device:
    """``--device``: cpu, cuda or cuda:N, and CUDA only where there is one."""
    try:
        device = torch.device(text)
    except RuntimeError:
        ap.error(f"--device {text}: expected cpu, cuda or cuda:N")
    if device.type not in ("cpu", "cuda"):
        ap.error(f"--device {text}: expected cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            ap.error(f"--device {text}: CUDA is not available here (torch {torch.__version__}); "
                     "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            ap.error(f"--device {text}: there are {torch.cuda.device_count()} CUDA device(s)")
    return device


def measure(model_name, batch, compiled, graph, data, labels, device, amp, gen, cfg, args,
            compile_name) -> tuple:
    """One table row. Its model, optimizer and step are local: they are freed on return,
    before the next row resets the peak-memory counter."""
    model = create_model(model_name).to(device, memory_format=torch.channels_last)
    run = torch.compile(model, mode=args.compile_mode) if compiled else model
    step = make_step(run, data, labels, batch, device, amp, gen, cfg, cuda_graph=graph)
    n, secs = time_steps(step, device, args.seconds)
    ips = n * batch / secs
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    mode = " + ".join([compile_name] * compiled + ["cuda graph"] * graph) or "eager"
    if graph and step.train_step.graph is None:
        mode += " (not recorded: ran eagerly)"
    print(f"{model_name} batch {batch} {mode}: {ips:,.0f} images/s", flush=True)
    if args.profile and not compiled and not graph:
        split = split_step(step.train_step, batch)
        print(f"{model_name} batch {batch} step split (ms, synchronised): "
              + ", ".join(f"{k} {v:.2f}" for k, v in split.items()))
        if device.type == "cuda":
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(10):
                    step()
                sync(device)
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))
    return (model_name, batch, mode, ips, 1000 * secs / n, FER2013_TRAIN / ips, mem)


def free_memory(device: torch.device, compiled: bool = False) -> None:
    """Collect what the last row left (model, optimizer, CUDA graph) and start a new peak."""
    if compiled:
        torch._dynamo.reset()  # its caches may hold the last compiled model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["mba_cnn"], choices=list_models(),
                    metavar="MODEL", help=f"models to time (of {', '.join(list_models())})")
    ap.add_argument("--batch-sizes", nargs="+", type=whole_number(1), default=[64])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cpu, cuda or cuda:N (default: cuda where there is one)")
    ap.add_argument("--threads", type=whole_number(1), default=None,
                    help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--seconds", type=number(0, open_low=True), default=5.0,
                    help="timed seconds per row")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                    help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="also time the whole step replayed as one CUDA graph")
    ap.add_argument("--profile", action="store_true", help="step split and top kernels")
    args = ap.parse_args(argv)
    device = parse_device(ap, args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = device.type == "cuda"
    cfg = AugmentConfig(erasing=0.5)
    gen = torch.Generator(device).manual_seed(0)
    data = torch.randint(0, 256, (4096, 48, 48), dtype=torch.uint8, device=device, generator=gen)
    labels = torch.randint(0, 7, (4096,), device=device, generator=gen)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; {torch.get_num_threads()} CPU thread(s); "
          f"bf16 autocast: {amp}; channels_last")
    modes = [(False, False)]
    if args.compile:
        modes.append((True, False))
    if args.cuda_graph:
        modes.append((False, True))
        if args.compile and args.compile_mode not in GRAPHING_COMPILE_MODES:
            modes.append((True, True))
    compile_name = "compile" if args.compile_mode == "default" else f"compile {args.compile_mode}"
    rows = []
    for model_name in args.models:
        for batch in args.batch_sizes:
            for compiled, graph in modes:
                free_memory(device, args.compile)  # the peak counts this row's memory only
                rows.append(measure(model_name, batch, compiled, graph, data, labels, device,
                                    amp, gen, cfg, args, compile_name))
    print()
    print("| model | batch | mode | images/s | ms/step | FER2013 epoch (s) | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for m, b, mode, ips, ms, ep, mem in rows:
        print(f"| {m} | {b} | {mode} | {ips:,.0f} | {ms:.2f} | {ep:.1f} | {mem:.0f} |")


if __name__ == "__main__":
    main()
