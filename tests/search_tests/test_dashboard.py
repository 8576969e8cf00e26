"""`paretune dashboard` serves optuna-dashboard: read the study back through its HTTP API,
and open it in headless Chromium to find the Pareto-front plot."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from paretune.objectives import objectives

CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = os.environ.get("PARETUNE_SCREENSHOTS")  # keep the screenshot here if set


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def dashboard(small_study: Any) -> Iterator[str]:
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "paretune.cli", "dashboard", "--storage", small_study.storage,
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(base + "/api/meta")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read() if proc.stdout else ""
                    pytest.fail(f"paretune dashboard did not come up on {base}:\n{out}")
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _study_id(base: str, name: str) -> int:
    studies = _get(base + "/api/studies")["study_summaries"]
    return int(next(s["study_id"] for s in studies if s["study_name"] == name))


def test_api_shows_objectives_metrics_params_and_failure_reasons(
    dashboard: str, small_study: Any
) -> None:
    from conftest import FAILED  # tests/search_tests/conftest.py

    detail = _get(f"{dashboard}/api/studies/{_study_id(dashboard, small_study.name)}")
    assert detail["name"] == small_study.name
    assert detail["objective_names"] == ["accuracy", "trainable_params", "latency_ms"]
    assert detail["directions"] == ["maximize", "minimize", "minimize"]
    study_attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
    assert "paretune.hypervolume" in study_attrs and "paretune.context" in study_attrs
    trials = detail["trials"]
    assert len(trials) == 6
    metrics = {o.name for o in objectives("classification")}
    for t in trials:
        attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
        assert "params" in attrs and "train.lr" in json.loads(attrs["params"])
        if t["number"] == FAILED:
            assert t["state"] == "Fail"
            assert attrs["error"] == "out of memory (on purpose, in a test)"
        else:
            assert t["state"] == "Complete"
            assert metrics <= set(attrs), metrics - set(attrs)
            assert float(attrs["accuracy"]) == pytest.approx(t["values"][0])
            assert "train.lr" in {p["name"] for p in t["params"]}
    assert {t["number"] for t in detail["best_trials"]} <= {
        t["number"] for t in trials if t["state"] == "Complete"
    }


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_browser_finds_the_pareto_front_plot(
    dashboard: str, small_study: Any, tmp_path: Path
) -> None:
    if _chromium() is None or not Path(CHROMEDRIVER).exists():
        pytest.skip("headless browser test needs Chromium and its driver: "
                    "apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(_chromium())
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1600"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        study_id = _study_id(dashboard, small_study.name)
        driver.get(f"{dashboard}/dashboard/studies/{study_id}")
        wait = WebDriverWait(driver, 60)
        plot = wait.until(ec.presence_of_element_located((By.ID, "graph-pareto-front")))
        # plotly has drawn into it: the points are SVG paths in the plot's layers
        wait.until(lambda d: plot.find_elements(By.CSS_SELECTOR, ".main-svg .point"))
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", plot)
        time.sleep(0.5)
        assert "Pareto Front" in driver.page_source
        shot = Path(SCREENSHOTS or tmp_path) / "dashboard-pareto-front.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shot))
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    finally:
        driver.quit()
