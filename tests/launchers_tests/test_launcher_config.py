"""launcher.* keys: validated in the config, one line naming the key, the rule and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from paretune.errors import ConfigError
from paretune.search import parse_config


def _cfg(raw: dict[str, Any], **launcher: Any) -> Any:
    return parse_config({**raw, "launcher": launcher}, check_data=False)


def test_options_are_the_keys_of_the_chosen_launcher(raw_config: dict[str, Any]) -> None:
    assert _cfg(raw_config).launcher.options() == {}
    assert _cfg(raw_config, type="multiprocess", workers=4).launcher.options() == {
        "max_concurrent": None, "retries": 0, "workers": 4, "device": "auto", "mps": "auto",
    }
    ray = _cfg(raw_config, type="ray", gpus_per_trial=0.25, address="auto")
    assert ray.launcher.options() == {
        "max_concurrent": None, "retries": 0, "address": "auto", "gpus_per_trial": 0.25,
        "cpus_per_trial": 1.0, "device": "auto", "mps": "auto",
    }


@pytest.mark.parametrize(
    ("launcher", "message"),
    [
        (
            {'type': 'slurm'},
            "launcher.type must be one of local, multiprocess, ray, but got 'slurm'.",
        ),
        (
            {'type': 'ray', 'max_concurrent': 0},
            'launcher.max_concurrent must be a positive integer, but got 0.',
        ),
        (
            {'type': 'ray', 'retries': -1},
            'launcher.retries must be an integer >= 0, but got -1.',
        ),
        (
            {'type': 'multiprocess', 'workers': 1.5},
            'launcher.workers must be a positive integer, but got 1.5.',
        ),
        (
            {'type': 'ray', 'gpus_per_trial': -0.5},
            'launcher.gpus_per_trial must be a number >= 0, but got -0.5.',
        ),
        (
            {'type': 'ray', 'gpus_per_trial': 1.5},
            "launcher.gpus_per_trial above 1 must be a whole number (Ray's rule), but got "
            '1.5; use 1 or 2.',
        ),
        (
            {'type': 'ray', 'cpus_per_trial': 'two'},
            "launcher.cpus_per_trial must be a number >= 0, but got 'two'.",
        ),
        (
            {'type': 'ray', 'address': ''},
            "launcher.address must be 'auto', 'ray://HOST:PORT' or HOST:PORT, but got ''; "
            'leave it unset to start a local Ray instance.',
        ),
        (
            {'type': 'multiprocess', 'gpus_per_trial': 0.5},
            "launcher.gpus_per_trial applies to launcher.type ray, not 'multiprocess'; "
            'remove launcher.gpus_per_trial or set launcher.type: ray.',
        ),
        (
            {'type': 'local', 'max_concurrent': 4},
            'launcher.max_concurrent applies to launcher.type multiprocess or ray, not '
            "'local'; remove launcher.max_concurrent or set launcher.type: multiprocess.",
        ),
        (
            {'type': 'ray', 'workers': 2},
            "launcher.workers applies to launcher.type multiprocess, not 'ray'; remove "
            'launcher.workers or set launcher.type: multiprocess.',
        ),
        (
            {'type': 'ray', 'nodes': 2},
            "unknown key in section 'launcher': 'nodes'.",
        ),
    ],
)
def test_bad_launcher_values_name_key_rule_and_fix(
    raw_config: dict[str, Any], launcher: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _cfg(raw_config, **launcher)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_ray_not_installed_says_how_to_install(
    raw_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util
    import sys

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    message = "launcher.type 'ray' needs Ray, which is not installed: pip install 'paretune[ray]'"
    with pytest.raises(ConfigError, match=r"pip install 'paretune\[ray\]'") as info:
        _cfg(raw_config, type="ray")
    assert str(info.value) == message
    # the launcher says the same where it is built without a config
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    from paretune.launchers import make_launcher

    with pytest.raises(ConfigError) as info:
        make_launcher("ray")
    assert str(info.value) == message
