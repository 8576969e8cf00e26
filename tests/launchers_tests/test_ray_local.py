"""The private Ray instance a run starts: reachable from this machine only, quiet in a log
file, and a retried trial says so. Skipped where Ray is not installed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ray = pytest.importorskip("ray")

import _launcher_checks  # noqa: E402

from paretune.launchers.ray import RayLauncher  # noqa: E402
from paretune.trial import TrialSpec  # noqa: E402

pytestmark = pytest.mark.ray
DRIVER = Path(__file__).parents[1] / "search_tests" / "_driver.py"


def _outside_address() -> str | None:
    """This machine's address on its network (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: only picks the route
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


@pytest.fixture
def launcher() -> Iterator[RayLauncher]:
    from ray import cloudpickle

    if ray.is_initialized():
        ray.shutdown()
    cloudpickle.register_pickle_by_value(_launcher_checks)
    launcher = RayLauncher(retries=1, cpus_per_trial=1)
    yield launcher
    launcher.close()
    cloudpickle.unregister_pickle_by_value(_launcher_checks)


def test_private_ray_listens_on_loopback_only(launcher: RayLauncher) -> None:
    host, port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
    assert host == "127.0.0.1"
    socket.create_connection((host, int(port)), timeout=5).close()
    outside = _outside_address()
    if outside is None:
        pytest.skip("this machine has no network address besides loopback")
    with pytest.raises(OSError):
        socket.create_connection((outside, int(port)), timeout=5).close()


def test_a_retry_is_one_line(
    launcher: RayLauncher, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    launcher.submit(_launcher_checks.dies_once, TrialSpec(0, {}, {"marker": str(tmp_path / "m")}))
    (result,) = launcher.wait()
    assert result.state == "complete", result.error
    lines = [line for line in capfd.readouterr().err.splitlines() if "retry" in line]
    assert len(lines) == 1
    assert lines[0].startswith("paretune: trial 0: its worker died (Ray ")
    assert lines[0].endswith("); retry 1 of 1")


def test_a_ray_run_logged_to_a_file_has_no_colour_codes_or_ray_warnings(
    raw_config: dict[str, Any], tmp_path: Path
) -> None:
    if ray.is_initialized():
        ray.shutdown()
    raw_config["study"].update(n_trials=2, heartbeat_interval=1, grace_period=10)
    raw_config["launcher"] = {"type": "ray", "device": "cpu", "max_concurrent": 1}
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(raw_config))
    log = tmp_path / "stderr.log"
    with log.open("w") as err:
        done = subprocess.run([sys.executable, str(DRIVER), str(config)], stderr=err,
                              stdout=subprocess.PIPE, text=True, timeout=180,
                              env={**os.environ, "FAKE_SAY": "epoch 1/1 done",
                                   "PYTHONPATH": str(Path(__file__).parents[2])})
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\033[" not in text
    assert "WARNING" not in text and "Traceback" not in text
    assert text.count("trial 0: epoch 1/1 done") == 1  # the worker's line came through
