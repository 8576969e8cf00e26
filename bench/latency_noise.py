"""Latency of one model measured by N trials that share one device, with and without the lock.

A benchmark, not a test. N processes (8 by default) share one GPU (or the CPU): each holds a
copy of the same model, trains it on BANKING77 batches without pause, and meanwhile times
the latency of the same eval batch several times, as a trial does at its end
(``paretune.objectives.cost.time_model``: warm-up, synchronised timers, median of the timed
batches). ``lock``: training steps take the device's lock shared and timings exclusively
(``paretune.devicelock``, what trials do); ``nolock``: neither, as before; ``alone``: one
process and no neighbours, the model's own latency. ``--cuda-graph`` is
``measure.cuda_graph``: on a GPU, ``on`` times replays of the pass captured as a CUDA graph,
``off`` each eager pass, Python's launches included. The N medians
of a run should agree: the report gives each, their max / min, the largest deviation from
their median (target: within +/-10% with the lock) and their median against ``alone``.

    # on a GPU machine (real MiniLM weights from $PARETUNE_DEVICE_MINILM)
    python bench/latency_noise.py --data /path/to/banking77
    # a plumbing check on a CPU box: tiny model, 4 processes, short rounds
    python bench/latency_noise.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_model(kind: str, tmp: Path, texts: list[str]) -> str:
    if kind not in ("random", "tiny"):
        from paretune.models import resolve

        return resolve(kind)
    from paretune.models import make_tiny_model

    shape = (dict(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536)
             if kind == "random" else dict(hidden_size=128, intermediate_size=256))
    return make_tiny_model(tmp / f"{kind}-model", texts, **shape)


def worker(rank: int, args: argparse.Namespace, model_path: str, texts: list[str],
           mode: str, start: Any, measured: Any, counts: Any, out: Any) -> None:
    """Train without pause; time the eval batch ``args.rounds`` times, spread over the run;
    stop once every process has timed all its rounds."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from paretune import devicelock
    from paretune.objectives.cost import time_model

    hf_logging.set_verbosity_error()
    device = args.device
    # CPU threads shared out as the multiprocess launcher does (OMP_NUM_THREADS = cores / N
    # workers): N processes with a thread per core each would oversubscribe the host, whose
    # CPU launches a small model's kernels
    torch.set_num_threads(args.threads)
    torch.manual_seed(rank)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(  # fp32, as trials train
        model_path, num_labels=77, ignore_mismatched_sizes=True, dtype=torch.float32).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    enc = tokenizer(texts[: args.batch_size], padding=True, truncation=True,
                    max_length=args.max_length, return_tensors="pt").to(device)
    timed = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    pool = tokenizer(texts[:512], padding="max_length", truncation=True,
                     max_length=args.max_length, return_tensors="pt")
    labels = torch.randint(0, 77, (len(pool["input_ids"]),))
    lock = mode != "nolock"
    step_lock = devicelock.shared if lock else (lambda d: contextlib.nullcontext())
    timing_lock = devicelock.exclusive if lock else (lambda d: contextlib.nullcontext())
    times: list[float] = []
    raw: list[list[float]] = []  # every batch of each round, ms
    stamps: list[float] = []  # when each round began (epoch seconds)
    overlap = 0  # training steps the other processes finished while this one timed
    cpus: list[int] = []
    start.wait()  # every process loaded: all train from here on
    steps, next_round = 0, args.warm_steps + rank * args.stagger
    began = time.perf_counter()
    while True:
        i = torch.randint(0, len(labels), (args.train_batch,))
        with step_lock(device):
            loss = torch.nn.functional.cross_entropy(
                model(input_ids=pool["input_ids"][i].to(device),
                      attention_mask=pool["attention_mask"][i].to(device)).logits,
                labels[i].to(device))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss.item()
            steps += 1
            counts[rank] = steps  # inside the step: what a timing can see
        if steps == next_round and len(times) < args.rounds * args.repeats:
            model.eval()
            # the same lock time_model takes, held here to count the neighbours' steps
            # that end while this process times
            with timing_lock(device):
                cpus.append(_cpu())
                before = sum(counts[:]) - steps
                stamps.append(round(time.time(), 3))
                timing = time_model(model, timed, device, warmup=0,
                                    repeats=args.warmup + args.repeats, exclusive=False,
                                    cuda_graph=args.cuda_graph == "on")
                how = timing.mode
                raw.append([round(1000 * t, 3) for t in timing.times])  # warm-up batches too
                times += timing.times[args.warmup:]
                overlap += sum(counts[:]) - steps - before
            model.train()
            next_round += args.round_every
            if len(times) == args.rounds * args.repeats:
                with measured.get_lock():
                    measured.value += 1
        if measured.value == args.processes:
            break
    out.put({"rank": rank, "median_ms": 1000 * statistics.median(times),
             "min_ms": 1000 * min(times), "max_ms": 1000 * max(times), "steps": steps,
             "overlap": overlap, "cpus": cpus, "timed": how,
             "raw_ms": raw, "stamps": stamps,
             "seconds": round(time.perf_counter() - began, 1)})


@contextlib.contextmanager
def _mps(args: argparse.Namespace, *, packed: bool) -> Iterator[bool]:
    """CUDA MPS for the copies as the multiprocess launcher decides it (``--mps``, the
    launcher's ``launcher.mps``: ``auto`` uses it when copies share the GPU); its pipe
    directory goes into the environment the spawned copies inherit."""
    from paretune.launchers._base import environ
    from paretune.launchers._mps import LocalMps

    mps = LocalMps(args.mps, packed=packed, gpus=args.device.startswith("cuda"),
                   log=lambda line: print(line, flush=True))
    try:
        with environ(mps.env):
            yield bool(mps.env)
    finally:
        mps.close()


def _cpu() -> int:
    """The CPU this thread last ran on (Linux), -1 where unknown."""
    try:
        return int(Path("/proc/thread-self/stat").read_text().rsplit(")", 1)[1].split()[36])
    except (OSError, IndexError, ValueError):
        return -1


def run(args: argparse.Namespace, model_path: str, texts: list[str], mode: str
        ) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    n = 1 if mode == "alone" else args.processes
    start, measured, out = ctx.Barrier(n), ctx.Value("i", 0), ctx.Queue()
    counts = ctx.Array("i", n)
    one = argparse.Namespace(**{**vars(args), "processes": n})
    procs = [ctx.Process(target=worker, args=(r, one, model_path, texts, mode, start,
                                              measured, counts, out))
             for r in range(n)]
    began = time.perf_counter()
    with _mps(args, packed=n > 1) as mps:
        for p in procs:
            p.start()
        rows = sorted((out.get(timeout=args.timeout) for _ in procs), key=lambda r: r["rank"])
        for p in procs:
            p.join()
    medians = [r["median_ms"] for r in rows]
    center = statistics.median(medians)
    return {
        "mode": mode, "device": args.device,
        "processes": n, "medians_ms": [round(m, 3) for m in medians],
        "max_over_min": round(max(medians) / min(medians), 3),
        "max_deviation": round(max(abs(m - center) / center for m in medians), 3),
        "timed": sorted({r["timed"] for r in rows}),  # cuda graph or eager
        "steps": [r["steps"] for r in rows],
        # neighbours' training steps that ended while a copy was timing (0 with the lock)
        "steps_during_timings": sum(r["overlap"] for r in rows),
        "mps": mps,
        # the CPU each copy's main thread was on at its timings: a slow copy on a busy or
        # far CPU shows here
        "cpus": [r["cpus"] for r in rows],
        # the median of each round's timed batches
        "rounds_ms": [[round(statistics.median(batches[args.warmup:]), 3)
                       for batches in r["raw_ms"]] for r in rows],
        # every batch timed, warm-up first, and when each round began: a slow round shows
        # whether it was slow throughout or only at its start
        "raw_ms": [r["raw_ms"] for r in rows],
        "round_stamps": [r["stamps"] for r in rows],
        "wall_s": round(time.perf_counter() - began, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("PARETUNE_DEVICE_MINILM", "minilm"),
                        help="model folder or alias, 'random' (MiniLM shape) or 'tiny'")
    parser.add_argument("--data", default="/work/shared/data/banking77",
                        help="folder with train.csv (column text)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if any)")
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--modes", default="alone,nolock,lock",
                        help="alone: one process, no neighbours (the model's own latency); "
                             "nolock / lock: N processes, without / with the device lock")
    parser.add_argument("--rounds", type=int, default=3, help="timings per process")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20, help="timed batches per round")
    parser.add_argument("--batch-size", type=int, default=16, help="rows of the timed batch")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--warm-steps", type=int, default=10,
                        help="training steps before a process's first timing")
    parser.add_argument("--stagger", type=int, default=2, help="steps between ranks' timings")
    parser.add_argument("--round-every", type=int, default=20, help="steps between rounds")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process (default: cores / processes, as the "
                             "multiprocess launcher gives its workers)")
    parser.add_argument("--mps", default="off", choices=("auto", "on", "off"),
                        help="CUDA MPS for the copies, as launcher.mps (default off, as the "
                             "launcher's auto leaves it where latency is an objective timed "
                             "on the GPU; on: the copies share one MPS daemon)")
    parser.add_argument("--cuda-graph", default="on", choices=("on", "off"),
                        help="measure.cuda_graph: on a GPU, time replays of the pass captured "
                             "as a CUDA graph (on) or each eager pass (off)")
    parser.add_argument("--timeout", type=float, default=420.0)
    parser.add_argument("--quick", action="store_true",
                        help="tiny model, 4 processes, short rounds: a CPU plumbing check")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        args.model, args.processes, args.rounds, args.repeats = "tiny", 4, 2, 10
        args.warm_steps, args.round_every, args.max_length = 3, 5, 32
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.processes)
    with open(Path(args.data) / "train.csv", newline="") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)]
    from paretune.trial import describe_device

    print(f"{datetime.date.today()}: {args.processes} processes on "
          f"{describe_device(args.device, args.threads if args.device == 'cpu' else None)}"
          f" (per process, {args.threads} CPU threads each); torch {torch.__version__}; "
          f"model {args.model}; CUDA graph {args.cuda_graph}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="paretune-noise-") as tmp, \
            tempfile.TemporaryDirectory(prefix="paretune-locks-") as locks:
        os.environ["PARETUNE_LOCK_DIR"] = locks  # this run's own lock files
        model_path = make_model(args.model, Path(tmp), texts)
        for mode in args.modes.split(","):
            result = run(args, model_path, texts, mode)
            results.append(result)
            print(json.dumps(result), flush=True)
    alone = next((r["medians_ms"][0] for r in results if r["mode"] == "alone"), None)
    print("\n| mode | medians of the copies (ms) | max / min | max deviation from their "
          "median | their median / alone |")
    print("|---|---|---:|---:|---:|")
    for r in results:
        medians = ", ".join(f"{m:.2f}" for m in r["medians_ms"])
        ratio = f"{statistics.median(r['medians_ms']) / alone:.2f}" if alone else "-"
        print(f"| {r['mode']} | {medians} | {r['max_over_min']:.2f} | "
              f"{100 * r['max_deviation']:.1f}% | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
