"""launcher.mps: when a run uses CUDA MPS, starts its own daemon, reuses one, stops its own.

On CPU a fake ``nvidia-cuda-mps-control`` (a shell script on PATH, written per test) stands
in for NVIDIA's: it records every call, makes the control socket and a stand-in daemon
process on ``-d``, and ends them on ``quit``. GPUs are named by ``CUDA_VISIBLE_DEVICES``;
nothing touches CUDA except the test marked ``gpu``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from paretune.errors import ConfigError
from paretune.launchers import _mps
from paretune.launchers.multiprocess import MultiprocessLauncher
from paretune.search import parse_config, run_study
from paretune.trial import TrialResult, TrialSpec

FAKE = r"""#!/bin/sh
# A stand-in for nvidia-cuda-mps-control: records every call in $FAKE_MPS_LOG.
pipe="${CUDA_MPS_PIPE_DIRECTORY:-/tmp/nvidia-mps}"
if [ "$1" = "-d" ]; then
  echo "-d $pipe CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}" >> "$FAKE_MPS_LOG"
  if [ -n "$FAKE_MPS_FAIL" ]; then echo "An instance of this daemon is already running"; exit 1; fi
  mkdir -p "$pipe"
  sleep 300 > /dev/null 2>&1 < /dev/null &
  echo $! > "$pipe/nvidia-cuda-mps-control.pid"
  if [ -z "$FAKE_MPS_NO_SOCKET" ]; then : > "$pipe/control"; fi
  exit 0
fi
read -r cmd
echo "$cmd $pipe" >> "$FAKE_MPS_LOG"
if [ ! -e "$pipe/control" ]; then echo "Cannot find MPS control daemon process"; exit 1; fi
case "$cmd" in
  quit*) kill "$(cat "$pipe/nvidia-cuda-mps-control.pid")"; rm -f "$pipe/control" ;;
esac
exit 0
"""


@dataclass
class Fake:
    log: Path
    system_pipe: Path  # where clients look for a daemon that ran before the run

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def started(self) -> list[str]:
        return [c for c in self.calls() if c.startswith("-d ")]

    def quits(self) -> list[str]:
        return [c for c in self.calls() if c.startswith("quit")]

    def system_daemon(self) -> None:
        """A daemon that runs before the run (no pid file: the run cannot know its pid)."""
        self.system_pipe.mkdir(parents=True, exist_ok=True)
        (self.system_pipe / "control").touch()


def install_fake(root: Path, mp: pytest.MonkeyPatch) -> Fake:
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / _mps.BINARY
    script.write_text(FAKE)
    script.chmod(0o755)
    fake = Fake(root / "calls.log", root / "system-pipe")
    mp.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    mp.setenv("FAKE_MPS_LOG", str(fake.log))
    mp.setenv(_mps.PIPE_ENV, str(fake.system_pipe))
    mp.delenv("FAKE_MPS_FAIL", raising=False)
    mp.delenv("FAKE_MPS_NO_SOCKET", raising=False)
    return fake


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fake:
    monkeypatch.setattr(_mps, "BASE_DIR", str(tmp_path))
    return install_fake(tmp_path, monkeypatch)


def no_daemons() -> list[tuple[int, dict[str, str] | None]]:
    return []


def writes_env(spec: TrialSpec) -> TrialResult:
    """Records the MPS variables its worker process sees (a file per process)."""
    time.sleep(0.3)  # long enough that the next trial goes to another worker
    out = Path(spec.context["out"]) / f"{os.getpid()}.json"
    keys = (_mps.PIPE_ENV, _mps.LOG_ENV, "CUDA_VISIBLE_DEVICES")
    out.write_text(json.dumps({k: os.environ.get(k) for k in keys}))
    return TrialResult(spec.number, "complete", {"lr": 1.0})


def seen(out: Path) -> list[dict[str, str | None]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def run_two(launcher: Any, out: Path) -> list[dict[str, str | None]]:
    out.mkdir(exist_ok=True)
    for n in range(2):
        launcher.submit(writes_env, TrialSpec(n, {}, {"out": str(out)}))
    done: list[TrialResult] = []
    while len(done) < 2:
        done += launcher.wait()
    assert all(r.state == "complete" for r in done), [r.error for r in done]
    return seen(out)


# -- the decision ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "packed", "gpus", "use"),
    [
        ("auto", True, True, True),
        ("auto", False, True, False),  # one worker per GPU: nothing to share
        ("auto", True, False, False),  # packed on CPU slots
        ("on", False, True, True),
        ("off", True, True, False),
        (True, True, True, True),  # YAML's bare `on`
        (False, True, True, False),  # YAML's bare `off`
    ],
)
def test_mps_is_wanted_when_trials_are_packed_on_gpus(
    mode: Any, packed: bool, gpus: bool, use: bool
) -> None:
    assert _mps.wanted(mode, packed=packed, gpus=gpus) is use


def test_on_without_a_gpu_and_bad_values_are_one_line_errors(raw_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="launcher.mps is on, but the trials run on no GPU"):
        _mps.wanted("on", packed=True, gpus=False)
    cfg = parse_config({**raw_config, "launcher": {"type": "ray", "mps": True}}, check_data=False)
    assert cfg.launcher.options()["mps"] is True  # the launcher reads it as "on"
    for launcher, message in (
        ({"type": "multiprocess", "mps": "yes"},
         "launcher.mps must be auto, on or off, but got 'yes'."),
        ({"type": "local", "mps": "on"},
         "launcher.mps applies to launcher.type multiprocess or ray, not 'local'; remove "
         "launcher.mps or set launcher.type: multiprocess."),
    ):
        with pytest.raises(ConfigError) as info:
            parse_config({**raw_config, "launcher": launcher}, check_data=False)
        assert str(info.value) == message


# -- the daemon of one machine -------------------------------------------------------------


def test_auto_starts_a_daemon_only_when_packing_on_gpus_and_stops_it(fake: Fake) -> None:
    lines: list[str] = []
    for packed, gpus in ((False, True), (True, False)):
        quiet = _mps.LocalMps("auto", packed=packed, gpus=gpus, log=lines.append)
        assert quiet.env == {} and quiet.states == []
        quiet.close()
    assert fake.calls() == [] and lines == []

    mps = _mps.LocalMps("auto", packed=True, gpus=True, log=lines.append)
    (state,) = mps.states
    assert state.action == "started"
    root = Path(state.detail).parent
    assert root.parent == Path(_mps.BASE_DIR) and root.name.startswith("paretune-mps-")
    # its own pipe and log directories, never the system's; all GPUs visible to the daemon
    assert mps.env == {_mps.PIPE_ENV: str(root / "pipe"), _mps.LOG_ENV: str(root / "log")}
    assert fake.started() == [f"-d {root / 'pipe'} CUDA_VISIBLE_DEVICES=unset"]
    assert state.pid is not None and _mps._alive(state.pid)
    assert lines == [f"[paretune] MPS: started a daemon for this run (pipe directory "
                     f"{root / 'pipe'}); it is stopped when the run ends"]
    mps.close()
    mps.close()  # once only
    assert fake.quits() == [f"quit {root / 'pipe'}"]
    assert not _mps._alive(state.pid) and not root.exists()
    assert lines[-1] == f"[paretune] MPS: stopped this run's daemon (pid {state.pid})"


def test_a_running_daemon_is_used_and_never_stopped(fake: Fake) -> None:
    fake.system_daemon()
    lines: list[str] = []
    mps = _mps.LocalMps("auto", packed=True, gpus=True, log=lines.append)
    assert mps.states[0].action == "reused"
    assert mps.env == {_mps.PIPE_ENV: str(fake.system_pipe)}
    mps.close()
    assert fake.calls() == [f"get_server_list {fake.system_pipe}"]  # asked, nothing more
    assert (fake.system_pipe / "control").exists()
    assert lines == [f"[paretune] MPS: using the daemon that runs (pipe directory "
                     f"{fake.system_pipe}); it is left running"]
    with pytest.raises(ValueError, match="this run did not start it"):
        _mps.MpsControl().stop(_mps.Daemon(str(fake.system_pipe)))


def test_a_daemon_found_among_the_processes_is_used(fake: Fake, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "control").touch()
    env = {_mps.PIPE_ENV: str(elsewhere), _mps.LOG_ENV: "/var/log/mps"}
    control = _mps.MpsControl(processes=lambda: [(4321, env)])
    mps = _mps.LocalMps("on", packed=False, gpus=True, log=lambda line: None, control=control)
    assert mps.env == env and mps.states[0].pid == 4321
    mps.close()
    assert fake.started() == [] and fake.quits() == []


def test_a_daemon_of_unknown_pipe_directory_is_left_alone(fake: Fake) -> None:
    control = _mps.MpsControl(processes=lambda: [(99, None)])  # another user's: unreadable
    lines: list[str] = []
    mps = _mps.LocalMps("auto", packed=True, gpus=True, log=lines.append, control=control)
    assert mps.env == {} and "pid 99" in lines[0] and lines[0].startswith("[paretune] MPS: not")
    mps.close()
    with pytest.raises(ConfigError) as info:
        _mps.LocalMps("on", packed=True, gpus=True, log=lambda line: None, control=control)
    assert "\n" not in str(info.value) and "pid 99" in str(info.value)
    assert fake.started() == [] and fake.quits() == []


def test_another_runs_daemon_is_not_borrowed(fake: Fake) -> None:
    other = _mps.LocalMps("auto", packed=True, gpus=True, log=lambda line: None)
    theirs = {_mps.PIPE_ENV: other.env[_mps.PIPE_ENV]}
    control = _mps.MpsControl(processes=lambda: [(other.states[0].pid or 0, theirs)])
    mine = _mps.LocalMps("auto", packed=True, gpus=True, log=lambda line: None, control=control)
    assert mine.states[0].action == "started" and mine.env != other.env
    mine.close()
    other.close()
    assert len(fake.started()) == len(fake.quits()) == 2


def test_on_without_the_program_is_a_one_line_error(
    fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ConfigError) as info:
        MultiprocessLauncher(workers=2, mps="on")
    assert str(info.value) == (
        "launcher.mps is on, but MPS cannot be used: nvidia-cuda-mps-control is not on PATH; "
        "install the NVIDIA driver's nvidia-cuda-mps-control or set launcher.mps: auto."
    )
    lines: list[str] = []
    auto = _mps.LocalMps("auto", packed=True, gpus=True, log=lines.append)
    assert auto.env == {}
    assert lines == ["[paretune] MPS: not used: nvidia-cuda-mps-control is not on PATH"]
    auto.close()
    assert list(Path(_mps.BASE_DIR).glob("paretune-mps-*")) == []


def test_a_daemon_that_fails_to_start_means_no_mps(
    fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MPS_FAIL", "1")
    lines: list[str] = []
    mps = _mps.LocalMps("auto", packed=True, gpus=True, log=lines.append)
    assert mps.env == {} and "already running" in lines[0]
    mps.close()
    with pytest.raises(ConfigError, match="exit code 1"):
        _mps.LocalMps("on", packed=True, gpus=True, log=lambda line: None)
    assert fake.quits() == []


def test_a_daemon_that_never_answers_is_ended(
    fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MPS_NO_SOCKET", "1")
    with pytest.raises(_mps.MpsError, match="made no control socket"):
        _mps.MpsControl().start(tmp_path / "run", timeout=0.3)
    pid = int((tmp_path / "run" / "pipe" / _mps.PID_FILE).read_text())
    assert not _mps._alive(pid)  # quit could not reach it: terminated


# -- the multiprocess launcher --------------------------------------------------------------


def test_packed_workers_get_the_daemons_env(
    fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    launcher = MultiprocessLauncher(workers=2)  # two workers on GPU 0
    with launcher:
        (state,) = launcher._mps.states
        envs = run_two(launcher, tmp_path / "out")
    assert len(envs) == 2  # two processes ...
    for env in envs:  # ... each with the run's daemon, and its GPU
        assert env == {_mps.PIPE_ENV: state.detail, _mps.LOG_ENV: state.env[_mps.LOG_ENV],
                       "CUDA_VISIBLE_DEVICES": "0"}
    assert fake.quits() == [f"quit {state.detail}"] and not Path(state.detail).exists()
    assert _mps.PIPE_ENV not in os.environ or os.environ[_mps.PIPE_ENV] == str(fake.system_pipe)

    launcher = MultiprocessLauncher(workers=1)  # one per GPU: no MPS
    with launcher:
        assert launcher._mps.states == []
        envs = run_two(launcher, tmp_path / "out1")
    assert envs[0][_mps.PIPE_ENV] == str(fake.system_pipe)  # inherited, untouched
    launcher = MultiprocessLauncher(workers=2, device="cpu", mps="auto")
    with launcher:
        assert launcher._mps.states == []
    assert len(fake.started()) == 1


def test_the_runs_daemon_stops_after_an_error_and_after_ctrl_c(
    fake: Fake, raw_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import _launcher_checks

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    launcher = MultiprocessLauncher(workers=2)
    with pytest.raises(RuntimeError), launcher:
        assert launcher._mps.states[0].action == "started"
        raise RuntimeError("the study broke")
    assert len(fake.quits()) == 1

    raw = {**raw_config, "study": {**raw_config["study"], "n_trials": 4}}
    cfg = parse_config({**raw, "launcher": {"type": "multiprocess", "workers": 2}})
    inner = MultiprocessLauncher(**cfg.launcher.options())
    pipe = inner._mps.states[0].detail
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, launcher=_launcher_checks._CtrlC(inner),
                  trial_fn=_launcher_checks.stalls_on_trial_1, log=lambda line: None)
    assert fake.quits()[1:] == [f"quit {pipe}"] and not Path(pipe).exists()

    def broken_log(line: str) -> None:
        if line.startswith("trial "):
            raise RuntimeError("a log line failed")

    raw = {**raw_config, "study": {**raw_config["study"], "name": "another"}}
    cfg = parse_config({**raw, "launcher": {"type": "multiprocess", "workers": 2}})
    with pytest.raises(RuntimeError, match="a log line failed"):
        run_study(cfg, trial_fn=_launcher_checks.instant, log=broken_log)
    assert len(fake.started()) == len(fake.quits()) == 3
    assert list(Path(_mps.BASE_DIR).glob("paretune-mps-*")) == []


# -- the Ray launcher: one daemon per node, shared by the node's actors ----------------------


@pytest.fixture(scope="module")
def ray_with_a_gpu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fake]:
    """A local Ray whose one node declares a GPU, with the fake program on its PATH."""
    ray = pytest.importorskip("ray")
    import sys

    from ray import cloudpickle

    root = tmp_path_factory.mktemp("mps-ray")
    with pytest.MonkeyPatch.context() as mp:
        fake = install_fake(root, mp)  # Ray's workers inherit this environment
        import logging

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level=logging.WARNING)
        try:
            yield fake
        finally:
            ray.shutdown()
            cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.mark.ray
def test_ray_actors_share_their_nodes_daemon_and_it_stops_at_close(
    ray_with_a_gpu: Fake, tmp_path: Path
) -> None:
    from paretune.launchers.ray import RayLauncher

    fake, lines = ray_with_a_gpu, list[str]()
    launcher = RayLauncher(gpus_per_trial=0.5)  # two trials per GPU: packed
    launcher._mps._log = lines.append
    (state,) = launcher._mps.states
    assert state.action == "started" and launcher.max_concurrent == 2
    root = Path(state.detail).parent
    try:
        envs = run_two(launcher, tmp_path / "out")
    finally:
        launcher.close()
    assert len(envs) == 2  # two actors, one daemon
    for env in envs:
        assert env[_mps.PIPE_ENV] == str(root / "pipe") and env["CUDA_VISIBLE_DEVICES"] == "0"
    assert fake.started() == [f"-d {root / 'pipe'} CUDA_VISIBLE_DEVICES=unset"]
    assert fake.quits() == [f"quit {root / 'pipe'}"]
    assert not root.exists() and state.pid is not None and not _mps._alive(state.pid)
    assert len(lines) == 1 and "stopped this run's daemon" in lines[0]


@pytest.mark.ray
def test_ray_uses_a_running_daemon_and_leaves_it(ray_with_a_gpu: Fake, tmp_path: Path) -> None:
    from paretune.launchers.ray import RayLauncher

    fake = ray_with_a_gpu
    before = len(fake.calls())
    fake.system_daemon()
    try:
        launcher = RayLauncher(gpus_per_trial=0.5)
        with launcher:
            assert [s.action for s in launcher._mps.states] == ["reused"]
            envs = run_two(launcher, tmp_path / "out")
        assert {env[_mps.PIPE_ENV] for env in envs} == {str(fake.system_pipe)}
        assert (fake.system_pipe / "control").exists()
        assert all(c.startswith("get_server_list") for c in fake.calls()[before:])
        off = RayLauncher(gpus_per_trial=1, mps="off")  # not packed, and off
        assert off._mps.run is None
        off.close()
    finally:
        shutil.rmtree(fake.system_pipe)


# -- a real GPU and NVIDIA's program ---------------------------------------------------------


def is_mps_client(spec: TrialSpec) -> TrialResult:
    """Runs a CUDA kernel, then asks the daemon whether this process is one of its clients."""
    import torch

    x = torch.ones(512, 512, device="cuda")
    (x @ x).sum().item()
    control = _mps.MpsControl()
    daemon = _mps.Daemon(os.environ.get(_mps.PIPE_ENV, _mps.DEFAULT_PIPE_DIR))
    clients: list[int] = []
    for server in control._ask("get_server_list", daemon)[1].split():
        out = control._ask(f"get_client_list {server}", daemon)[1]
        clients += [int(pid) for pid in out.split() if pid.isdigit()]
    time.sleep(1.0)  # the other worker runs its trial meanwhile
    return TrialResult(spec.number, "complete", {"client": float(os.getpid() in clients)})


@pytest.mark.gpu
def test_packed_workers_are_mps_clients_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or shutil.which(_mps.BINARY) is None:
        pytest.skip(f"needs a CUDA GPU and {_mps.BINARY}")
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", first)
    before = _mps.running_daemons()
    launcher = MultiprocessLauncher(workers=2)  # two on one GPU: auto uses MPS
    (state,) = launcher._mps.states
    assert state.action in ("started", "reused"), state.detail
    try:
        for n in range(2):
            launcher.submit(is_mps_client, TrialSpec(n, {}, {}))
        results = launcher.wait()
        results += launcher.wait() if len(results) < 2 else []
    finally:
        launcher.close()
    assert [r.metrics.get("client") for r in results] == [1.0, 1.0], [r.error for r in results]
    if state.action == "started":  # gone with the run
        assert state.pid is not None and not _mps._alive(state.pid)
        assert not Path(state.detail).exists()
    assert {pid for pid, _ in _mps.running_daemons()} == {pid for pid, _ in before}


@pytest.mark.parametrize("objectives,measure,mps,used", [
    ({"accuracy": "maximize", "latency_ms": "minimize"}, "auto", "auto", "off"),
    ({"accuracy": "maximize", "latency_ms": "minimize"}, "auto", "on", "on"),
    ({"accuracy": "maximize", "latency_ms": "minimize"}, "cpu", "auto", "auto"),
    ({"accuracy": "maximize", "size_mb": "minimize"}, "auto", "auto", "auto"),
])
def test_auto_leaves_mps_off_where_latency_is_an_objective_timed_on_the_gpu(
    objectives: dict[str, str], measure: str, mps: str, used: str,
    raw_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from paretune.search import _engine

    raw_config["study"]["objectives"] = objectives
    raw_config["measure"] = {"device": measure}
    raw_config["launcher"] = {"type": "multiprocess", "workers": 4, "mps": mps}
    monkeypatch.setattr(_engine, "resolved_device", lambda cfg: "cuda")
    lines: list[str] = []
    options = _engine.launcher_options(parse_config(raw_config), lines.append)
    assert options["mps"] == used and options["workers"] == 4
    assert len(lines) == (used == "off") and all("latency_ms" in line for line in lines)
