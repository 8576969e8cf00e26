"""CUDA Multi-Process Service (MPS) for trials packed on a GPU. No Optuna here.

Worker processes that share a GPU each hold a CUDA context, and the GPU time-slices
between them; under MPS one server process holds a single context for all of them and
their kernels run side by side. ``launcher.mps`` says when a run's workers use it:

- ``auto``: when trials are packed (more than one worker process per GPU) on GPUs;
- ``on``: whenever the trials run on GPUs; an error where MPS cannot be had;
- ``off``: never.

Per node, a control daemon that already runs is used as it is: never stopped, never
reconfigured (only asked, read-only, for its server list to see that it answers). Where
none runs, the run starts one with its own pipe and log directories
(``/tmp/paretune-mps-RUN/``), so that it cannot collide with a system daemon, and quits it
when the run ends. Worker processes find the daemon through ``CUDA_MPS_PIPE_DIRECTORY``,
which must be in their environment before CUDA initializes in them.

The run's daemon starts without ``CUDA_VISIBLE_DEVICES``: a daemon that sees a subset of
the GPUs renumbers them for its clients (NVIDIA's MPS guide, "CUDA_VISIBLE_DEVICES"), while
the launchers give each worker its GPU under the number the machine gives it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from paretune.errors import ConfigError, ParetuneError
from paretune.progress import emit

__all__ = [
    "MODES", "Daemon", "LocalMps", "MpsControl", "NodeState", "RayMps", "ensure_node",
    "mode_of", "release_node", "running_daemons", "wanted",
]

MODES = ("auto", "on", "off")
BINARY = "nvidia-cuda-mps-control"
DEFAULT_PIPE_DIR = "/tmp/nvidia-mps"  # where clients look when CUDA_MPS_PIPE_DIRECTORY is unset
PIPE_ENV, LOG_ENV = "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"
PID_FILE = "nvidia-cuda-mps-control.pid"  # the daemon writes it into its pipe directory
# a run's daemons live in BASE_DIR/paretune-mps-RUN/: short, since the daemon makes UNIX
# sockets in its pipe directory and a socket path has at most 107 bytes
BASE_DIR = "/tmp"
RUN_PREFIX = "paretune-mps-"

Runner = Callable[[list[str], str, dict[str, str]], tuple[int, str]]
"""Runs ``argv`` with ``stdin`` text and environment ``env``; returns (exit code, output)."""


class MpsError(ParetuneError):
    """The run's daemon could not be started."""


def mode_of(value: Any) -> str:
    """``launcher.mps`` as auto | on | off (YAML reads a bare on / off as true / false)."""
    if value is True or value is False:
        return "on" if value else "off"
    if value not in MODES:
        raise ConfigError(f"launcher.mps must be auto, on or off, but got {value!r}.")
    return str(value)


def wanted(mode: Any, *, packed: bool, gpus: bool) -> bool:
    """Whether the run's workers use MPS: ``packed`` when a GPU runs more than one worker,
    ``gpus`` when the trials run on GPUs at all."""
    mode = mode_of(mode)
    if mode == "on" and not gpus:
        raise ConfigError(
            "launcher.mps is on, but the trials run on no GPU; run them on GPUs or set "
            "launcher.mps: auto."
        )
    return gpus and (mode == "on" or (mode == "auto" and packed))


def run_command(argv: list[str], stdin: str, env: dict[str, str]) -> tuple[int, str]:
    """The default ``Runner``. Output goes to a file, not a pipe: ``-d`` leaves a daemon
    behind, which must not hold our end open; a new session keeps Ctrl-C away from it."""
    with tempfile.TemporaryFile("w+") as out:
        try:
            code = subprocess.run(
                argv, input=stdin, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                timeout=30, start_new_session=True,
            ).returncode
        except subprocess.TimeoutExpired:
            return 124, f"{' '.join(argv)} did not answer within 30 s"
        except OSError as exc:
            return 127, str(exc)
        out.seek(0)
        return code, out.read()


def running_daemons() -> list[tuple[int, dict[str, str] | None]]:
    """The control daemons running on this machine (``-d`` or ``-f``): pid and environment,
    None where it cannot be read (another user's process)."""
    found: list[tuple[int, dict[str, str] | None]] = []
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.path.basename(argv[0]) != BINARY.encode() or not {b"-d", b"-f"} & set(argv[1:]):
            continue
        env: dict[str, str] | None
        try:
            raw = (entry / "environ").read_bytes().decode(errors="replace").split("\0")
            env = dict(item.split("=", 1) for item in raw if "=" in item)
        except OSError:
            env = None
        found.append((int(entry.name), env))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        pass
    else:
        return stat.rpartition(")")[2].split()[:1] != ["Z"]  # a zombie has ended
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else "..." + text[-limit:]


@dataclass(frozen=True)
class Daemon:
    """A control daemon the worker processes of a node connect to."""

    pipe_dir: str
    log_dir: str | None = None
    owned: bool = False  # started by this run, which stops it at its end
    pid: int | None = None

    def env(self) -> dict[str, str]:
        """What a worker process needs in its environment before CUDA initializes."""
        env = {PIPE_ENV: self.pipe_dir}
        if self.log_dir:
            env[LOG_ENV] = self.log_dir
        return env


class MpsControl:
    """Finds, starts and stops ``nvidia-cuda-mps-control`` daemons on this machine.

    Args:
        binary: the control program; ``None``: found on ``PATH``.
        runner: runs the control program (tests inject one); ``None``: ``run_command``.
        processes: the running control daemons, as ``running_daemons`` lists them.
    """

    def __init__(
        self,
        binary: str | None = None,
        runner: Runner | None = None,
        processes: Callable[[], list[tuple[int, dict[str, str] | None]]] | None = None,
    ) -> None:
        self.binary = binary or shutil.which(BINARY)
        self._run = runner or run_command
        self._processes = processes or running_daemons

    def _ask(self, command: str, daemon: Daemon) -> tuple[int, str]:
        assert self.binary is not None
        return self._run([self.binary], command + "\n", {**os.environ, **daemon.env()})

    def answers(self, pipe_dir: str) -> bool:
        """Whether a daemon listens in ``pipe_dir``: its control socket is there and it
        answers ``get_server_list`` (read-only)."""
        if self.binary is None or not os.path.exists(os.path.join(pipe_dir, "control")):
            return False
        code, out = self._ask("get_server_list", Daemon(pipe_dir))
        return code == 0 and "Cannot find MPS control daemon" not in out

    def find(self) -> tuple[Daemon | None, list[int]]:
        """The running daemon to use, if one answers where clients look for it
        (``$CUDA_MPS_PIPE_DIRECTORY``, else ``/tmp/nvidia-mps``) or where a running daemon's
        own environment says it listens; else None, and the pids of daemons whose pipe
        directory is unknown (another user's). Other paretune runs' daemons are left out:
        each run uses and stops its own."""
        pipe_dir = os.environ.get(PIPE_ENV) or DEFAULT_PIPE_DIR
        if self.answers(pipe_dir):
            return Daemon(pipe_dir, os.environ.get(LOG_ENV)), []
        unknown = []
        for pid, env in self._processes():
            theirs = None if env is None else env.get(PIPE_ENV) or DEFAULT_PIPE_DIR
            if theirs is not None and Path(theirs).parent.name.startswith(RUN_PREFIX):
                continue
            if theirs is not None and self.answers(theirs):
                return Daemon(theirs, (env or {}).get(LOG_ENV), pid=pid), []
            unknown.append(pid)
        return None, unknown

    def start(self, root: Path, timeout: float = 10.0) -> Daemon:
        """Start a daemon owned by the caller, its pipe and log directories in ``root``."""
        if self.binary is None:
            raise MpsError(f"{BINARY} is not on PATH")
        pipe, log = root / "pipe", root / "log"
        pipe.mkdir(parents=True, exist_ok=True)
        log.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
        env.update({PIPE_ENV: str(pipe), LOG_ENV: str(log)})
        code, out = self._run([self.binary, "-d"], "", env)
        if code != 0:
            raise MpsError(f"`{BINARY} -d` failed (exit code {code}): {_one_line(out)}")
        deadline = time.monotonic() + timeout
        while not (pipe / "control").exists():
            if time.monotonic() > deadline:
                why = _one_line(_read(log / "control.log"))
                pid = self._pid(pipe)
                if pid is not None:  # started, but unusable: it is ours, so it goes
                    self.stop(Daemon(str(pipe), str(log), owned=True, pid=pid), timeout=5.0)
                raise MpsError(f"`{BINARY} -d` made no control socket in {timeout:.0f} s"
                               + (f"; its log: {why}" if why else ""))
            time.sleep(0.05)
        return Daemon(str(pipe), str(log), owned=True, pid=self._pid(pipe))

    def _pid(self, pipe: Path) -> int | None:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            text = _read(pipe / PID_FILE).strip()
            if text.isdigit():
                return int(text)
            time.sleep(0.05)
        # a driver that writes no pid file: the daemon whose environment names our pipe
        return next((pid for pid, env in self._processes()
                     if env is not None and env.get(PIPE_ENV) == str(pipe)), None)

    def stop(self, daemon: Daemon, timeout: float = 30.0) -> str:
        """Quit a daemon the caller started; what happened, for the log. The daemon waits
        for its clients to end first; a daemon still there after ``timeout`` is terminated."""
        if not daemon.owned:
            raise ValueError(f"refusing to stop the MPS daemon in {daemon.pipe_dir}: "
                             "this run did not start it")
        code, out = self._ask("quit", daemon)
        if daemon.pid is None:
            ok = "sent it quit" if code == 0 else f"quit failed: {_one_line(out)}"
            return f"stopped this run's daemon ({ok}; its pid is unknown)"
        if _wait_gone(daemon.pid, timeout if code == 0 else 1.0):
            return f"stopped this run's daemon (pid {daemon.pid})"
        with contextlib.suppress(OSError):
            os.kill(daemon.pid, signal.SIGTERM)
        if _wait_gone(daemon.pid, 5.0):
            return f"terminated this run's daemon (pid {daemon.pid}): quit left it running"
        return f"this run's daemon (pid {daemon.pid}) is STILL RUNNING: quit and SIGTERM failed"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


# -- one node's MPS for one run: decided once, under a file lock, by whoever comes first --


@dataclass
class NodeState:
    """What a run uses on one node. ``action``: ``started`` (the run's own daemon),
    ``reused`` (one that ran before) or ``none``; ``detail``: the pipe directory, or why
    MPS is not used."""

    action: str
    detail: str
    env: dict[str, str] = field(default_factory=dict)
    pid: int | None = None


def new_run() -> str:
    """A fresh run id: names the run's directory on every node."""
    return uuid.uuid4().hex[:12]


def run_root(run: str) -> Path:
    return Path(BASE_DIR) / f"{RUN_PREFIX}{run}"


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    import fcntl  # POSIX only, like MPS itself

    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _decide(root: Path, control: MpsControl) -> NodeState:
    if control.binary is None:
        return NodeState("none", f"{BINARY} is not on PATH")
    found, unknown = control.find()
    if found is not None:
        return NodeState("reused", found.pipe_dir, found.env(), found.pid)
    if unknown:
        return NodeState(
            "none", f"an MPS control daemon runs (pid {', '.join(map(str, unknown))}) but its "
            f"pipe directory is unknown; set {PIPE_ENV} to it",
        )
    try:
        daemon = control.start(root)
    except (MpsError, OSError) as exc:
        return NodeState("none", str(exc))
    return NodeState("started", daemon.pipe_dir, daemon.env(), daemon.pid)


def ensure_node(run: str, control: MpsControl | None = None) -> NodeState:
    """This node's MPS for ``run``: the first caller (the driver, a Ray task, an actor)
    finds or starts the daemon; every later caller on the node reads the same answer."""
    root = run_root(run)
    with _locked(root):
        state_file = root / "state.json"
        if state_file.exists():
            return NodeState(**json.loads(state_file.read_text()))
        state = _decide(root, control or MpsControl())
        state_file.write_text(json.dumps(asdict(state)))
    return state


def release_node(run: str, control: MpsControl | None = None) -> str | None:
    """Quit the daemon ``run`` started on this node, if it started one, and remove the
    run's directory; what was done, for the log (None: nothing to say)."""
    root = run_root(run)
    if not root.is_dir():
        return None
    with _locked(root):
        text = _read(root / "state.json")
        state = NodeState(**json.loads(text)) if text else None
        if state is None or state.action != "started":
            shutil.rmtree(root, ignore_errors=True)
            return None
        daemon = Daemon(state.detail, state.env.get(LOG_ENV), owned=True, pid=state.pid)
        message = (control or MpsControl()).stop(daemon)
        if "STILL RUNNING" not in message:  # its sockets stay while it lives
            shutil.rmtree(root, ignore_errors=True)
    return message


def _said(state: NodeState) -> str:
    if state.action == "started":
        return (f"started a daemon for this run (pipe directory {state.detail}); it is "
                "stopped when the run ends")
    if state.action == "reused":
        return f"using the daemon that runs (pipe directory {state.detail}); it is left running"
    return f"not used: {state.detail}"


def _required(where: str, state: NodeState) -> ConfigError:
    return ConfigError(
        f"launcher.mps is on, but MPS cannot be used{where}: {_one_line(state.detail)}; "
        "install the NVIDIA driver's nvidia-cuda-mps-control or set launcher.mps: auto."
    )


class LocalMps:
    """MPS for the worker processes of this machine (the multiprocess launcher).

    ``env`` goes into each GPU worker's environment; ``states`` says what the run uses
    (empty: MPS not wanted); ``close`` stops the run's own daemon (also at interpreter exit,
    should nobody call it).
    """

    def __init__(
        self, mode: Any, *, packed: bool, gpus: bool,
        log: Callable[[str], None] = emit, control: MpsControl | None = None,
    ) -> None:
        self.env: dict[str, str] = {}
        self.states: list[NodeState] = []
        self._run: str | None = None
        self._log, self._control = log, control
        if not wanted(mode, packed=packed, gpus=gpus):
            return
        self._run = new_run()
        atexit.register(self.close)
        state = ensure_node(self._run, control)
        self.states = [state]
        log(f"[paretune] MPS: {_said(state)}")
        if state.action == "none" and mode_of(mode) == "on":
            self.close()
            raise _required("", state)
        self.env = state.env

    def close(self) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        atexit.unregister(self.close)
        message = release_node(run, self._control)
        if message:
            self._log(f"[paretune] MPS: {message}")


class RayMps:
    """MPS for Ray actors: one daemon per GPU node, shared by the actors on it.

    One small task per GPU node, pinned there, finds or starts the node's daemon before
    any actor exists; each actor passes ``run`` to ``ensure_node`` in its constructor,
    before CUDA initializes in its process (a node that joins later gets its daemon from
    its first actor). ``close`` quits the run's daemons, node by node.
    """

    def __init__(
        self, ray: Any, mode: Any, *, packed: bool, gpus: bool,
        log: Callable[[str], None] = emit,
    ) -> None:
        self.run: str | None = None
        self.states: list[NodeState] = []  # one per GPU node, as the run started
        self._ray, self._log = ray, log
        if not wanted(mode, packed=packed, gpus=gpus):
            return
        nodes = self._gpu_nodes()
        if not nodes and mode_of(mode) == "on":
            raise ConfigError("launcher.mps is on, but the Ray cluster has no node with GPUs "
                              "yet; set launcher.mps: auto.")
        self.run = new_run()
        refs = [self._on(node, ensure_node).remote(self.run) for node in nodes]
        for node, ref in zip(nodes, refs):
            try:
                state = ray.get(ref, timeout=120)
            except Exception as exc:  # its actors will try again when they start
                state = NodeState("none", f"the node did not answer ({_one_line(str(exc))})")
            self.states.append(state)
            where = f" on node {node['NodeManagerAddress']}"
            log(f"[paretune] MPS{where}: {_said(state)}")
            if state.action == "none" and mode_of(mode) == "on":
                self.close()
                raise _required(where, state)

    def _gpu_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self._ray.nodes()
                if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0]

    def _on(self, node: dict[str, Any], fn: Callable[..., Any]) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        pin = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        return self._ray.remote(num_cpus=0, max_retries=0)(fn).options(scheduling_strategy=pin)

    def close(self) -> None:
        """After the actors are gone: quit the daemons this run started."""
        run, self.run = self.run, None
        if run is None:
            return
        nodes = self._gpu_nodes()
        refs = [self._on(node, release_node).remote(run) for node in nodes]
        for node, ref in zip(nodes, refs):
            try:
                message = self._ray.get(ref, timeout=60)
            except Exception as exc:
                message = f"could not reach the node to stop this run's daemon: {exc}"
            if message:
                self._log(f"[paretune] MPS on node {node['NodeManagerAddress']}: "
                          f"{_one_line(message)}")
