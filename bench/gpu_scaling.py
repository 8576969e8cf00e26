"""Trials/hour and GPU utilization of a MiniLM-shaped search on BANKING77, by GPU layout.

A benchmark, not a test: run it on a GPU machine. Each layout ``GxP`` runs one fresh study
(random sampler, seed 0, so every layout trains the same sequence of trials) on G GPUs with
P trials packed per GPU (Ray ``gpus_per_trial = 1/P``, or P multiprocess workers per GPU):

  1x1   one GPU, one trial at a time          (the baseline)
  1x4   one GPU, four packed trials           (target: >= 3.5x the trials/hour of 1x1)
  1x8   one GPU, eight packed trials
  2x1   two GPUs, one trial each              (target: >= 1.9x 1x1; skipped on one GPU)
  2x4   two GPUs, four packed trials each

``--mps on|off|both`` runs each layout with CUDA MPS (``launcher.mps: on``: the run's own
control daemon, or the one already running), without it (``off``), or both, one after the
other; ``--launcher both`` runs every layout through multiprocess, then Ray. Each line says
which daemon a run used (started / reused) and whether a daemon the run started was still
running after it (``mps_left``: it must be empty).

GPU utilization is sampled from nvidia-smi every 0.5 s while a layout runs. "steady" rates
leave out the first round of trials (each worker's cold start: imports, model load,
tokenization): warm trials/hour = concurrency / mean duration of the trials that ran
on an already-used worker. Every layout trains the same trial sequence (random sampler,
seed 0); ``--peft none`` makes every trial a full fine-tune.

    # on the GPU machine (real MiniLM weights; BANKING77 CSVs with columns text,category)
    python bench/gpu_scaling.py --model $PARETUNE_DEVICE_MINILM --data /path/to/banking77
    python bench/gpu_scaling.py --data DIR --layouts 1x1,1x4     # one layout set per call
    # MPS against none, both launchers (Ray needs `device-pack --ray`, so --model random)
    python bench/gpu_scaling.py --model random --launcher both --mps both \\
        --layouts 1x1,1x4,1x8 --trials-per-slot 2
    # each layout prints its JSON line as soon as it ends; --trials-per-slot 2 for a
    # shorter run (a layout runs G*P*trials-per-slot trials)
    # random-init model of the same shape (hidden 384, 6 layers, 12 heads, 1536 ffn)
    python bench/gpu_scaling.py --model random --data DIR
    # plumbing check on a CPU box: tiny model, few rows, 'GPUs' become CPU slots
    python bench/gpu_scaling.py --model tiny --max-train-rows 200 --max-eval-rows 60 \\
        --trials-per-slot 1 --layouts 1x1,1x2
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SPACE = {
    # every compression family off: the benchmark measures fine-tuning throughput
    "distill.enabled": False, "arch.n_layers": 0, "prune.ratio": 0.0, "quant.format": "fp32",
    "train.warmup_ratio": 0.0, "train.scheduler": "linear",
    "train.lr": {"low": 5e-5, "high": 5e-4, "log": True},
    "train.epochs": 1,
    "train.weight_decay": 0.0,
    "peft.method": ["none", "lora"],
    "lora.r": [8, 16],
    "lora.alpha": 16,
    "lora.dropout": 0.0,
    "lora.targets": "qv",
}


class GpuSampler(threading.Thread):
    """Polls nvidia-smi: per GPU index, utilization % and memory MiB samples."""

    def __init__(self, period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.period, self.stop_event = period, threading.Event()
        self.util: dict[int, list[float]] = {}
        self.mem: dict[int, list[float]] = {}
        self.available = shutil.which("nvidia-smi") is not None

    def run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits"]
        while self.available and not self.stop_event.is_set():
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout
            except (OSError, subprocess.SubprocessError):
                return
            for line in out.strip().splitlines():
                index, util, mem = (float(x) for x in line.split(","))
                self.util.setdefault(int(index), []).append(util)
                self.mem.setdefault(int(index), []).append(mem)
            self.stop_event.wait(self.period)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


def gpu_count() -> int:
    if shutil.which("nvidia-smi") is None:
        import torch  # no nvidia-smi to sample utilization, but the GPUs may still be there

        return int(torch.cuda.device_count())
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    return sum(line.startswith("GPU ") for line in out.splitlines())


def make_model(kind: str, tmp: Path, train_csv: Path) -> str:
    if kind not in ("random", "tiny"):
        return kind
    from paretune.models import make_tiny_model

    with train_csv.open(newline="") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)]
    shape = (dict(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536)
             if kind == "random" else {})
    return make_tiny_model(tmp / f"{kind}-model", texts, **shape)


def run_layout(args: argparse.Namespace, layout: str, model: str, tmp: Path,
               gpus: list[str], kind: str, mps: str) -> dict[str, Any]:
    from paretune.launchers import make_launcher
    from paretune.launchers._mps import running_daemons
    from paretune.search import parse_config, run_study

    n_gpus, per_gpu = (int(x) for x in layout.split("x"))
    slots = n_gpus * per_gpu
    on_gpu = bool(gpus)
    used = gpus[:n_gpus]
    cpus = os.cpu_count() or 1
    cpus_per_trial = max(1, cpus // slots) if on_gpu else 1
    launcher: dict[str, Any] = {"type": kind, "device": "cuda" if on_gpu else "cpu", "mps": mps}
    name = f"{kind}-{layout}-mps-{mps}"
    saved_env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if on_gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(used)
    if kind == "ray":
        import ray

        # CPU check: P*G logical CPU slots stand in for the packed GPU slots
        ray.init(num_cpus=cpus if on_gpu else slots, num_gpus=n_gpus if on_gpu else 0,
                 include_dashboard=False, logging_level=logging.WARNING)
        launcher.update(max_concurrent=slots, cpus_per_trial=cpus_per_trial,
                        gpus_per_trial=(1.0 / per_gpu) if on_gpu else 0)
    else:
        launcher.update(max_concurrent=slots, workers=slots)
    n_trials = args.trials_per_slot * slots
    raw = {
        "study": {"name": f"scaling-{name}", "storage": f"sqlite:///{tmp / (name + '.db')}",
                  "n_trials": n_trials, "seed": 0, "sampler": "random",
                  "objectives": {"accuracy": "maximize", "size_mb": "minimize"},
                  "cache_dir": str(tmp / f"cache-{name}")},
        "model": {"name": model, "max_length": args.max_length},
        "task": {"dataset": str(Path(args.data) / "train.csv"),
                 "eval_split": str(Path(args.data) / "test.csv"),
                 "text_column": "text", "label_column": "category",
                 "max_train_rows": args.max_train_rows, "max_eval_rows": args.max_eval_rows},
        "space": {**SPACE, "train.batch_size": args.batch_size,
                  **({"peft.method": args.peft} if args.peft else {})},
        "launcher": launcher,
        "measure": {"latency_repeats": 5, "latency_warmup": 2},
    }
    cfg = parse_config(raw)
    daemons_before = {pid for pid, _ in running_daemons()}
    sampler = GpuSampler()
    sampler.start()
    start = time.time()
    try:
        runner = make_launcher(kind, **cfg.launcher.options())  # starts the MPS daemon
        states = getattr(getattr(runner, "_mps", None), "states", [])
        mps_used = ",".join(s.action for s in states) or "-"  # started, reused or none
        study = run_study(cfg, launcher=runner,
                          log=lambda line: print(f"  [{name}] {line}", flush=True))
    finally:
        wall = time.time() - start
        sampler.stop()
        if kind == "ray":
            import ray

            ray.shutdown()
        if saved_env is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved_env
    done = sorted(t.datetime_complete.timestamp() for t in study.get_trials()
                  if t.state.name == "COMPLETE" and t.datetime_complete is not None)
    failed = [t.user_attrs.get("error") for t in study.get_trials() if t.state.name == "FAIL"]
    # warm: trials numbered >= slots ran on workers that had already run one (the first
    # `slots` trials went one to each fresh worker); throughput = concurrency / trial time
    warm = [t.user_attrs["duration_s"] for t in study.get_trials()
            if t.state.name == "COMPLETE" and t.number >= slots]
    steady = slots * 3600 / statistics.fmean(warm) if warm else None
    # nvidia-smi lists every GPU of the machine: keep the ones this layout used
    util = {i: statistics.fmean(v) for i, v in sampler.util.items() if v and str(i) in used}
    mem = {i: max(v) for i, v in sampler.mem.items() if v and str(i) in used}
    left = sorted({pid for pid, _ in running_daemons()} - daemons_before)
    return {
        "layout": layout, "launcher": kind, "mps": mps, "mps_daemon": mps_used,
        "mps_left": left, "device": "gpu" if on_gpu else "cpu",
        "trials": n_trials, "completed": len(done), "failed": len(failed),
        "errors": failed[:3], "wall_s": round(wall, 1),
        "trials_per_hour": round(len(done) / wall * 3600, 1),
        "steady_trials_per_hour": round(steady, 1) if steady else None,
        "gpu_util_mean": {str(i): round(u, 1) for i, u in util.items()},
        "gpu_mem_peak_mib": {str(i): m for i, m in mem.items()},
    }


def _ratio(r: dict[str, Any], base: dict[str, Any], key: str) -> float | None:
    return r[key] / base[key] if r[key] and base[key] else None


def report(results: list[dict[str, Any]]) -> None:
    print("\n| layout | launcher | MPS (daemon) | trials done/failed | wall s | trials/hour "
          "(wall) | warm trials/hour | mean GPU util % (per GPU) | peak GPU MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['layout']} | {r['launcher']} | {r['mps']} ({r['mps_daemon']}) | "
              f"{r['completed']}/{r['failed']} | {r['wall_s']} | {r['trials_per_hour']} | "
              f"{r['steady_trials_per_hour']} | {r['gpu_util_mean'] or 'n/a'} | "
              f"{r['gpu_mem_peak_mib'] or 'n/a'} |")
    left = [(r["launcher"], r["layout"], r["mps_left"]) for r in results if r["mps_left"]]
    print(f"MPS daemons left running by a run: {left or 'none'}")
    targets = {"1x4": 3.5, "2x1": 1.9}
    for kind in dict.fromkeys(r["launcher"] for r in results):
        mine = [r for r in results if r["launcher"] == kind]
        off = next((r for r in mine if r["layout"] == "1x1" and r["mps"] == "off"), None)
        for mps in dict.fromkeys(r["mps"] for r in mine):
            base = next((r for r in mine if r["layout"] == "1x1" and r["mps"] == mps), None)
            for r in (r for r in mine if r["mps"] == mps and r["layout"] != "1x1"):
                # against 1x1 of the same setting, and against 1x1 without MPS
                baselines = [b for b in (base, off) if b is not None]
                for against in baselines[:1] if base is off else baselines:
                    for key in ("trials_per_hour", "steady_trials_per_hour"):
                        ratio = _ratio(r, against, key)
                        if ratio is None:
                            continue
                        target = targets.get(r["layout"])
                        verdict = "" if target is None else (
                            f" (target >= {target}: {'met' if ratio >= target else 'NOT met'})")
                        print(f"{kind} {r['layout']} mps {mps} / 1x1 mps {against['mps']} "
                              f"{key}: {ratio:.2f}x{verdict}")
        for r in (r for r in mine if r["mps"] == "on"):  # the gain from MPS, layout by layout
            same = next((x for x in mine if x["layout"] == r["layout"] and x["mps"] == "off"),
                        None)
            ratio = _ratio(r, same, "steady_trials_per_hour") if same else None
            if ratio is not None:
                print(f"{kind} {r['layout']} warm trials/hour, MPS on / off: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("PARETUNE_DEVICE_MINILM", "random"),
                        help="saved model folder, 'random' (MiniLM shape) or 'tiny' "
                             "(default: $PARETUNE_DEVICE_MINILM, else random)")
    parser.add_argument("--data", default="/work/shared/data/banking77",
                        help="folder with BANKING77 train.csv and test.csv")
    parser.add_argument("--layouts", default="1x1,1x4,2x1,2x4",
                        help="GxP: G GPUs, P trials per GPU (layouts needing more GPUs "
                             "than the machine has are skipped)")
    parser.add_argument("--launcher", default="ray", choices=("ray", "multiprocess", "both"),
                        help="both: every layout through multiprocess, then through Ray")
    parser.add_argument("--mps", default="off", choices=("on", "off", "both"),
                        help="CUDA MPS (launcher.mps on / off); both: each layout without, "
                             "then with it")
    parser.add_argument("--trials-per-slot", type=int, default=3,
                        help="trials per concurrent slot (a layout runs G*P*this trials)")
    parser.add_argument("--max-train-rows", type=int, default=None)
    parser.add_argument("--max-eval-rows", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--peft", default=None, choices=("none", "lora"),
                        help="fix peft.method (default: search none and lora)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    n_gpu = gpu_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = ([g for g in visible.split(",") if g] if visible else
            [str(i) for i in range(n_gpu)])[:n_gpu]
    kinds = ["multiprocess", "ray"] if args.launcher == "both" else [args.launcher]
    settings = ["off", "on"] if args.mps == "both" else [args.mps]
    print(f"{len(gpus)} GPU(s) {gpus}; {os.cpu_count()} CPU cores; launcher {args.launcher}; "
          f"MPS {args.mps}; model {args.model}; data {args.data}", flush=True)
    if not gpus:
        print("no GPU: a CPU plumbing check, not GPU figures (G x P = CPU slots)", flush=True)
        if "on" in settings:
            print("no GPU: MPS 'on' runs are skipped", flush=True)
            settings = [m for m in settings if m != "on"] or ["off"]
    results = []
    with tempfile.TemporaryDirectory(prefix="paretune-scaling-") as tmp_name:
        tmp = Path(tmp_name)
        model = make_model(args.model, tmp, Path(args.data) / "train.csv")
        for kind in kinds:
            for layout in args.layouts.split(","):
                n_gpus = int(layout.split("x")[0])
                if gpus and n_gpus > len(gpus):
                    print(f"skip {layout}: needs {n_gpus} GPUs", flush=True)
                    continue
                for mps in settings:  # off and on back to back: the same machine state
                    result = run_layout(args, layout, model, tmp, gpus, kind, mps)
                    results.append(result)
                    print(json.dumps(result), flush=True)  # each run's figures at once
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
