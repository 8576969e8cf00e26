"""The Ray launcher: trials run in long-lived Ray actors, on this machine or a cluster.

Each actor is one worker process that runs trials one after another, so the base model
and the tokenized data stay warm in its per-process caches (``models.load_base``,
``data.tokenize``). Results come back to the driver, which alone writes the storage.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

from paretune.errors import ConfigError
from paretune.launchers._base import BaseLauncher, TrialFn, cancelled, worker_lost
from paretune.launchers._mps import RayMps
from paretune.progress import emit
from paretune.trial import TrialResult, TrialSpec

__all__ = ["RayLauncher"]


class _TrialActor:
    """One worker process; ``run`` is called for one trial at a time."""

    def __init__(self, mps_run: str | None = None) -> None:
        if mps_run is not None:  # the node's MPS daemon, before CUDA starts in this process
            from paretune.launchers._mps import ensure_node

            os.environ.update(ensure_node(mps_run).env)

    def run(self, fn: TrialFn, spec: TrialSpec) -> TrialResult:
        return fn(spec)

    def pid(self) -> int:
        return os.getpid()


@dataclass
class _Running:
    actor: Any
    fn: TrialFn
    spec: TrialSpec
    attempt: int
    start: float


def _why(exc: Exception) -> str:
    """Ray's account of a lost actor, without its generic troubleshooting text."""
    text = " ".join(str(exc).split())
    pid = re.search(r"\bpid: (\d+)", text)
    cause = re.search(r"(The actor is dead because .*?)(?: Some common causes|$)", text)
    where = f" (pid {pid.group(1)})" if pid else ""
    return f"Ray {type(exc).__name__}{where}: {cause.group(1) if cause else text}"


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast on a ``launcher.address`` no Ray cluster answers at (Ray itself keeps
    retrying for minutes). ``auto`` and unset are Ray's to resolve."""
    import socket

    if not address or address == "auto":
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rstrip("/").rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(
            f"launcher.address must be 'auto', 'ray://HOST:PORT' or HOST:PORT, but got "
            f"{address!r}."
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ConfigError(
            f"launcher.address {address!r}: no Ray cluster answers there ({why} within "
            f"{timeout:g} s); start one with `ray start --head`, check the address, or leave "
            "launcher.address unset to start a local Ray instance."
        ) from None


def _init_local_ray(ray: Any) -> None:
    """A private Ray instance on this machine, reachable from this machine only.

    Ray's servers listen on loopback only when the node address is 127.0.0.1, but
    ``ray.init`` turns 127.0.0.1 into the machine's network address; that one conversion is
    skipped while this instance starts.
    """
    from ray._private import services

    resolve = getattr(services, "resolve_ip_for_localhost", None)
    if resolve is not None:
        services.resolve_ip_for_localhost = lambda host: host  # type: ignore[attr-defined]
    try:
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False,
                 logging_level=logging.ERROR)
    finally:
        if resolve is not None:
            services.resolve_ip_for_localhost = resolve  # type: ignore[attr-defined]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "launcher.type 'ray' needs Ray, which is not installed: pip install 'paretune[ray]'"
        ) from None
    return ray


class RayLauncher(BaseLauncher):
    """Run trials in Ray actors, ``max_concurrent`` at a time, results as they finish.

    Args:
        max_concurrent: trials in flight; ``None`` fits as many as the cluster's CPUs and
            GPUs hold at ``cpus_per_trial`` / ``gpus_per_trial`` each. Trials beyond what
            the cluster holds wait in the driver for a free actor.
        retries: re-runs of a trial whose worker process or node died (not of a trial
            that failed on its own: that is data).
        address: ``None`` starts a local Ray instance (or reuses the one this process
            started); ``"auto"`` or ``"ray://host:port"`` joins a running cluster.
        gpus_per_trial: Ray ``num_gpus`` of each actor; fractional packs trials on a GPU.
            ``None``: 1 if the cluster has GPUs and ``device`` is not cpu, else 0.
        cpus_per_trial: Ray ``num_cpus`` of each actor.
        device: the trials' ``launcher.device``; ``cpu`` keeps them off GPUs.
        mps: CUDA MPS on each GPU node: ``auto`` (when trials are packed,
            ``gpus_per_trial`` < 1), ``on``, ``off``; see ``paretune.launchers._mps``.
    """

    def __init__(
        self,
        max_concurrent: int | None = None,
        retries: int = 0,
        address: str | None = None,
        gpus_per_trial: float | None = None,
        cpus_per_trial: float = 1.0,
        device: str = "auto",
        mps: str = "auto",
    ) -> None:
        ray = self._ray = _import_ray()
        self._owns_ray = False
        if not ray.is_initialized():
            check_address(address)
            if not sys.stderr.isatty():  # no colour codes in a log file
                os.environ.setdefault("RAY_COLOR_PREFIX", "0")
            try:
                if address is None:
                    _init_local_ray(ray)
                else:
                    ray.init(address=address, logging_level=logging.WARNING)
            except ConnectionError as exc:
                raise ConfigError(
                    f"launcher.address {address!r}: no Ray cluster answers there ({exc}); start "
                    "one with `ray start --head` or leave launcher.address unset."
                ) from None
            self._owns_ray = address is None
        total = ray.cluster_resources()
        if gpus_per_trial is None:
            gpus_per_trial = 1.0 if total.get("GPU", 0) >= 1 and device != "cpu" else 0.0
        if gpus_per_trial > 0 and total.get("GPU", 0) == 0 and address is None:
            raise ConfigError(
                f"launcher.gpus_per_trial is {gpus_per_trial}, but this Ray instance has no "
                "GPUs, so no trial could start; set launcher.gpus_per_trial: 0."
            )
        self.gpus_per_trial, self.cpus_per_trial = gpus_per_trial, cpus_per_trial
        self.retries = retries
        self.max_concurrent = max_concurrent or self._fits(total)
        self._actor_cls = ray.remote(_TrialActor).options(
            num_cpus=cpus_per_trial, num_gpus=gpus_per_trial, max_restarts=0
        )
        self._idle: list[Any] = []
        self._running: dict[Any, _Running] = {}
        self._queue: list[tuple[TrialFn, TrialSpec, int]] = []  # fn, spec, attempt
        self._cap, self._cap_checked = self._fits(total), time.monotonic()
        self._mps = RayMps(ray, mps, packed=0 < gpus_per_trial < 1, gpus=gpus_per_trial > 0)

    def _fits(self, total: dict[str, float]) -> int:
        """How many actors the cluster holds at once (at least 1)."""
        fits = min(
            total.get("CPU", 0) / self.cpus_per_trial if self.cpus_per_trial else math.inf,
            total.get("GPU", 0) / self.gpus_per_trial if self.gpus_per_trial else math.inf,
        )
        return max(1, int(fits + 1e-9)) if math.isfinite(fits) else 1  # 1/(1/3) is 3

    def _actor_cap(self) -> int:
        # Idle actors keep their CPUs and GPUs: never ask for more actors than the cluster
        # holds, or the extra ones (and the trials sent to them) would wait forever. A
        # cluster that grew (nodes joined) is seen within seconds.
        if time.monotonic() - self._cap_checked > 5:
            self._cap = self._fits(self._ray.cluster_resources())
            self._cap_checked = time.monotonic()
        return min(self.max_concurrent, self._cap)

    def submit(self, fn: TrialFn, spec: TrialSpec) -> None:
        self._queue.append((fn, spec, 0))
        self._dispatch()

    def _dispatch(self) -> None:
        """Start queued trials on idle actors, or on new ones while the cluster has room."""
        while self._queue:
            if self._idle:
                actor = self._idle.pop()
            elif len(self._running) < self._actor_cap():
                actor = self._actor_cls.remote(self._mps.run)
            else:
                return
            fn, spec, attempt = self._queue.pop(0)
            ref = actor.run.remote(fn, spec)
            self._running[ref] = _Running(actor, fn, spec, attempt, time.perf_counter())

    def wait(self) -> list[TrialResult]:
        ray = self._ray
        results: list[TrialResult] = []
        while not results and self._running:
            # a timeout, so that Ctrl-C reaches the driver while it waits
            ready, _ = ray.wait(list(self._running), num_returns=1, timeout=1.0)
            if not ready:
                continue
            ready, _ = ray.wait(list(self._running), num_returns=len(self._running), timeout=0)
            for ref in ready:
                result = self._collect(ref, retry=True)
                if result is not None:
                    results.append(result)
            self._dispatch()
        return results

    def _collect(self, ref: Any, *, retry: bool) -> TrialResult | None:
        """The finished trial's result; a lost worker is replaced (and the trial retried)."""
        ray = self._ray
        run = self._running.pop(ref)
        try:
            result: TrialResult = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the trial function raised: worker is fine
            self._idle.append(run.actor)
            cause = exc.cause if exc.cause is not None else exc
            reason = f"{type(cause).__name__}: {cause}"
            return TrialResult(run.spec.number, "fail", error=reason,
                               duration_s=time.perf_counter() - run.start)
        except ray.exceptions.RayError as exc:  # the actor's process or its node is gone
            self._kill(run.actor)
            if retry and run.attempt < self.retries:
                emit(f"paretune: trial {run.spec.number}: its worker died ({_why(exc)}); "
                     f"retry {run.attempt + 1} of {self.retries}")
                self._queue.insert(0, (run.fn, run.spec, run.attempt + 1))
                return None
            return worker_lost(run.spec.number, _why(exc), run.start, run.attempt)
        self._idle.append(run.actor)
        return result

    def _kill(self, actor: Any) -> None:
        try:
            self._ray.kill(actor)
        except Exception:  # already dead, or its node is gone
            pass

    def cancel(self) -> list[TrialResult]:
        """Keep trials that finished meanwhile; kill the actors of the rest (actor tasks
        cannot be interrupted otherwise) and report them cancelled."""
        now = time.perf_counter()
        results = [cancelled(spec.number, now) for _, spec, _ in self._queue]
        self._queue.clear()
        if not self._running:
            return results
        ready, _ = self._ray.wait(list(self._running), num_returns=len(self._running), timeout=0)
        results += [r for r in (self._collect(ref, retry=False) for ref in ready) if r is not None]
        for run in self._running.values():
            self._kill(run.actor)
            results.append(cancelled(run.spec.number, run.start))
        self._running.clear()
        return results

    def close(self) -> None:
        for actor in self._idle + [run.actor for run in self._running.values()]:
            self._kill(actor)
        self._idle.clear()
        self._running.clear()
        self._queue.clear()
        self._mps.close()  # quits the run's daemons once their clients, the actors, are gone
        if self._owns_ray:
            self._ray.shutdown()
            self._owns_ray = False
