"""The settings reference (docs/reference.md) is the code's traitlets help, rendered: it cannot
drift. And --generate-config, which prints the same settings as a config file."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from jhub_suspend.agent.app import NodeAgent
from jhub_suspend.service.app import SuspendService
from jhub_suspend.spawner import SuspendingKubeSpawner

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "render_reference", ROOT / "docs/render_reference.py"
)
assert _spec and _spec.loader
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


def test_the_committed_reference_is_the_rendered_help() -> None:
    assert (ROOT / "docs" / "reference.md").read_text() == reference.render(), (
        "docs/reference.md is out of date: run .venv/bin/python docs/render_reference.py"
    )


@pytest.mark.parametrize("cls", [SuspendingKubeSpawner, SuspendService, NodeAgent])
def test_every_own_setting_is_in_the_reference_with_its_help(cls) -> None:
    text = reference.render()
    traits = cls.class_traits(config=True)
    assert set(cls.class_own_traits(config=True)) <= set(reference.project_settings(cls))
    for name in reference.project_settings(cls):
        assert f"### `{cls.__name__}.{name}`" in text, name
        assert traits[name].help.strip(), f"{cls.__name__}.{name} has no help"


def test_the_reference_shows_defaults_and_command_line_forms() -> None:
    text = reference.render()

    def facts(owner: str) -> str:
        return text.split(f"### `{owner}`\n\n", 1)[1].split("\n", 1)[0]

    assert facts("SuspendService.idle_window") == "Float; default `3600`."
    assert facts("SuspendService.port").endswith(
        "`urlparse(self.service_url).port or 10101`; command line `--port`."
    )
    assert "`--dry-run` (sets True)" in facts("SuspendService.dry_run")
    assert facts("NodeAgent.port") == "Int; default `9770`; command line `--port`."
    assert "`0.6 * self.start_timeout`" in facts("SuspendingKubeSpawner.restore_timeout")


@pytest.mark.parametrize(
    "cls, config_option, extra",
    [
        (SuspendService, "-f", ["--prometheus-url=http://127.0.0.1:9"]),
        (NodeAgent, "--config", []),
    ],
)
def test_generate_config_prints_every_setting_and_the_file_loads(
    cls, config_option, extra, tmp_path, capsys
) -> None:
    app = cls()
    with pytest.raises(SystemExit) as exited:
        app.initialize(["--generate-config"])
    assert exited.value.code in (0, None)
    text = capsys.readouterr().out
    for name in cls.class_own_traits(config=True):
        assert re.search(rf"^# c\.{cls.__name__}\.{name} = ", text, re.M), name
    # every line is commented out but `c = get_config()`; uncommenting one sets it
    code = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert code == ["c = get_config()  #noqa"]
    line = re.search(
        rf"^# (c\.{cls.__name__}\.shutdown_timeout|c\.{cls.__name__}\.cycle_interval)"
        r" = .*$",
        text,
        re.M,
    )
    assert line
    path = tmp_path / "generated_config.py"
    path.write_text(text.replace(line.group(0), f"{line.group(1)} = 42.0"))
    loaded = cls()
    loaded.initialize([config_option, str(path), *extra])
    assert getattr(loaded, line.group(1).rsplit(".", 1)[1]) == 42.0


@pytest.mark.parametrize(
    "cls, config_option, name, extra",
    [
        (SuspendService, "-f", "cycle_interval", ["--prometheus-url=http://127.0.0.1:9"]),
        (NodeAgent, "--config", "shutdown_timeout", []),
    ],
)
def test_the_command_line_wins_over_the_config_file(cls, config_option, name, extra, tmp_path):
    path = tmp_path / "config.py"
    path.write_text(f"c.{cls.__name__}.{name} = 42.0\n")
    app = cls()
    app.initialize([config_option, str(path), f"--{cls.__name__}.{name}=7", *extra])
    assert getattr(app, name) == 7
