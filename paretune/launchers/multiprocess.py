"""The multiprocess launcher: long-lived worker processes on this machine, no Ray.

One worker per visible GPU (``CUDA_VISIBLE_DEVICES`` set to its GPU), or ``workers``
of them, spread round-robin over the GPUs (several per GPU packs small trials) or on the
CPU. Workers run trials one after another, so the base model and the tokenized data stay
warm in their per-process caches. Workers start with ``spawn``: no CUDA state or lock is
inherited from the driver.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from paretune.launchers._base import BaseLauncher, TrialFn, cancelled, environ, worker_lost
from paretune.launchers._mps import LocalMps
from paretune.progress import emit
from paretune.trial import TrialResult, TrialSpec

__all__ = ["MultiprocessLauncher", "visible_gpus"]


def visible_gpus() -> list[str]:
    """The GPU ids this process may use, as ``CUDA_VISIBLE_DEVICES`` names them."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch
    except ImportError:
        return []
    # device_count asks NVML where it can and leaves CUDA uninitialized in the driver
    return [str(i) for i in range(torch.cuda.device_count())]


def _worker_main(conn: Any, env: dict[str, str]) -> None:
    """Run ``fn(spec)`` for every job received until told to stop (``None``)."""
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        fn, spec = job
        start = time.perf_counter()
        try:
            result = fn(spec)
        except Exception as exc:  # run_trial never raises; another trial function may
            result = TrialResult(spec.number, "fail", error=f"{type(exc).__name__}: {exc}",
                                 duration_s=time.perf_counter() - start)
        conn.send(result)


@dataclass
class _Worker:
    proc: Any
    conn: Any
    gpu: str | None
    job: tuple[TrialFn, TrialSpec, int, float] | None = None  # fn, spec, attempt, start


def _death(proc: Any) -> str:
    proc.join(timeout=5)
    code = proc.exitcode
    if code is not None and code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
    else:
        how = f"exit code {code}"
    hint = "; the kernel's out-of-memory killer is a common cause" if code == -9 else ""
    return f"worker process {proc.pid} ended ({how}){hint}"


class MultiprocessLauncher(BaseLauncher):
    """Run trials in worker processes of this machine, results as they finish.

    Args:
        max_concurrent: trials in flight; ``None``: one per worker.
        retries: re-runs of a trial whose worker process died.
        workers: worker processes; ``None``: one per visible GPU, or 1 without GPUs.
        device: the trials' ``launcher.device``; ``cpu`` hides the GPUs from the workers.
        mps: CUDA MPS for the GPU workers: ``auto`` (when a GPU has several), ``on``,
            ``off``; see ``paretune.launchers._mps``.
    """

    def __init__(
        self,
        max_concurrent: int | None = None,
        retries: int = 0,
        workers: int | None = None,
        device: str = "auto",
        mps: str = "auto",
    ) -> None:
        import multiprocessing

        self._ctx = multiprocessing.get_context("spawn")
        gpus = visible_gpus() if device != "cpu" else []
        n = workers or max(1, len(gpus))
        self._gpus: list[str | None] = [gpus[i % len(gpus)] if gpus else None for i in range(n)]
        # CPU threads shared out, so that N workers do not each start one per core
        self._threads = str(max(1, (os.cpu_count() or 1) // n))
        self.max_concurrent = max_concurrent or n
        self.retries = retries
        self._workers: list[_Worker] = []
        self._queue: list[tuple[TrialFn, TrialSpec, int, float]] = []
        self._mps = LocalMps(mps, packed=n > len(gpus), gpus=bool(gpus))

    def _spawn(self, gpu: str | None) -> _Worker:
        env = {"CUDA_VISIBLE_DEVICES": gpu if gpu is not None else ""}
        if gpu is not None:
            env.update(self._mps.env)  # the daemon's pipe directory, before CUDA starts
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = os.environ.get(var, self._threads)
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child, env), daemon=True,
                                 name=f"paretune-worker-gpu{gpu}" if gpu else "paretune-worker")
        with environ(env):  # the child's interpreter starts with them already set
            proc.start()
        child.close()
        return _Worker(proc, parent, gpu)

    def submit(self, fn: TrialFn, spec: TrialSpec) -> None:
        self._queue.append((fn, spec, 0, time.perf_counter()))
        self._dispatch()

    def _dispatch(self) -> None:
        while self._queue:
            idle = next((w for w in self._workers if w.job is None), None)
            if idle is None:
                used = [w.gpu for w in self._workers]
                free = list(self._gpus)
                for g in used:
                    free.remove(g)
                if not free:
                    return
                idle = self._spawn(free[0])
                self._workers.append(idle)
            fn, spec, attempt, _ = job = self._queue.pop(0)
            idle.job = (fn, spec, attempt, time.perf_counter())
            try:
                idle.conn.send((fn, spec))
            except (BrokenPipeError, OSError):  # died while idle: replace it, try again
                self._queue.insert(0, job)
                self._drop(idle)

    def _drop(self, worker: _Worker) -> None:
        self._workers.remove(worker)
        worker.conn.close()
        if worker.proc.is_alive():
            worker.proc.kill()
        worker.proc.join(timeout=5)

    def _poll(self, worker: _Worker, *, retry: bool) -> TrialResult | None:
        """The worker's result if it has one; a dead worker's trial fails (or is retried)."""
        assert worker.job is not None
        fn, spec, attempt, start = worker.job
        try:
            if worker.conn.poll():
                result: TrialResult = worker.conn.recv()
                worker.job = None
                return result
        except (EOFError, OSError):
            pass
        if worker.proc.is_alive():
            return None
        why = _death(worker.proc)
        self._drop(worker)
        if retry and attempt < self.retries:
            emit(f"paretune: trial {spec.number}: its worker died ({why}); "
                 f"retry {attempt + 1} of {self.retries}")
            self._queue.insert(0, (fn, spec, attempt + 1, start))
            return None
        return worker_lost(spec.number, why, start, attempt)

    def wait(self) -> list[TrialResult]:
        from multiprocessing.connection import wait as wait_any

        results: list[TrialResult] = []
        while not results and any(w.job for w in self._workers):
            busy = [w for w in self._workers if w.job is not None]
            # a result on a pipe, or a worker's death; the timeout lets Ctrl-C through
            wait_any([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=1.0)
            for worker in busy:
                result = self._poll(worker, retry=True)
                if result is not None:
                    results.append(result)
            self._dispatch()
        return results

    def cancel(self) -> list[TrialResult]:
        """Keep trials that finished meanwhile; kill the workers of the rest."""
        results = []
        for worker in [w for w in self._workers if w.job is not None]:
            result = self._poll(worker, retry=False)
            if result is None and worker.job is not None:
                result = cancelled(worker.job[1].number, worker.job[3])
                self._drop(worker)
            if result is not None:
                results.append(result)
        results += [cancelled(spec.number, start) for _, spec, _, start in self._queue]
        self._queue.clear()
        return results

    def close(self) -> None:
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 5
        for worker in self._workers:
            worker.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.proc.is_alive():
                worker.proc.kill()
                worker.proc.join(timeout=5)
            worker.conn.close()
        self._workers.clear()
        self._mps.close()  # after the workers, its clients, are gone
