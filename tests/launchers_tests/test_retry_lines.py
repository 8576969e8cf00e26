"""A trial re-run after its worker died says so, in one line (multiprocess launcher; the Ray
launcher's is in test_ray_local.py)."""

from __future__ import annotations

from pathlib import Path

import _launcher_checks
import pytest

from paretune.launchers.multiprocess import MultiprocessLauncher
from paretune.trial import TrialSpec


def test_a_retry_is_one_line(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with MultiprocessLauncher(retries=2, device="cpu") as launcher:
        spec = TrialSpec(4, {}, {"marker": str(tmp_path / "marker")})
        launcher.submit(_launcher_checks.dies_once, spec)
        (result,) = launcher.wait()
    assert result.state == "complete", result.error
    lines = [line for line in capfd.readouterr().err.splitlines() if "retry" in line]
    assert lines == [lines[0]] and lines[0].startswith("paretune: trial 4: its worker died")
    assert "(exit code 7)" in lines[0] and lines[0].endswith("; retry 1 of 2")
