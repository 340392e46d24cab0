"""The product wheel: what hub images and user images install.

It is built from the files the images' Dockerfiles copy, checked for what it must not hold (the
local cluster, the test helpers, the demo, anything importing a test tool), then installed with
its dependencies into a clean virtual environment, where every module it ships must import and
its commands must run, without this checkout on the path.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# what helm-values/hub-image/Dockerfile and agent-image/Dockerfile copy into the build
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "jhub_suspend")
LEFT_OUT = ("jhub_suspend.localcluster", "jhub_suspend.testing", "jhub_suspend.demo")
# the test extra's tools: the product never imports them
TEST_TOOLS = {"pytest", "_pytest", "pytest_asyncio", "playwright", "hypothesis", "schemathesis"}


def _env() -> dict[str, str]:
    """This machine's settings (pip's indexes) without anything that would put this checkout
    or this environment on the clean one's path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(sys.prefix)
    )
    return env


def _run(argv: list[str | Path], cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, (argv, done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            shutil.copy2(ROOT / name, src / name)
    # this environment's setuptools, so that the build needs no network
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    _run([*pip_wheel, "-w", work / "dist", src], cwd=work)
    (built,) = (work / "dist").glob("jhub_suspend-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtual environment (not this one's packages) with the wheel and what it
    requires."""
    path = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", path], cwd=path.parent)
    _run(
        [path / "bin" / "python", "-m", "pip", "install", "-q", wheel], cwd=path.parent, timeout=600
    )
    return path


def _module_of(name: str) -> str:
    """jhub_suspend/service/app.py -> jhub_suspend.service.app (a package: its __init__)."""
    parts = name.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(module: str, is_package: bool, source: str) -> set[str]:
    """The absolute names of the modules a module's source imports."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{a.name}" for a in node.names)
    return found


def test_the_wheel_holds_the_product_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        sources = {n: z.read(n).decode() for n in names if n.endswith(".py")}
        (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = z.read(entry_points).decode()
    modules = {_module_of(n): n for n in sources}
    for left_out in LEFT_OUT:
        assert not [n for n in names if n.startswith(left_out.replace(".", "/") + "/")], left_out
    # the product, and the Lab extension installed where JupyterLab looks for it
    for module in ("jhub_suspend.spawner", "jhub_suspend.service.app", "jhub_suspend.agent.app"):
        assert module in modules, module
    assert "jhub_suspend/service/static/admin.js" in names
    assert "jhub_suspend/service/openapi.yaml" in names
    assert any(n.endswith("/share/jupyter/labextensions/jhub-suspend/package.json") for n in names)
    for module, name in modules.items():
        imported = _imports(module, name.endswith("__init__.py"), sources[name])
        tools = {i for i in imported if i.split(".")[0] in TEST_TOOLS}
        assert not tools, (name, tools)
        left = {i for i in imported if i.startswith(LEFT_OUT)}
        assert not left, (name, left)
    # every command's code is in the wheel (jhub-suspend-localcluster is not a command of it)
    assert "localcluster" not in scripts
    for line in scripts.splitlines():
        if "=" in line and ":" in line:
            target = line.split("=", 1)[1].strip().split(":")[0]
            assert target in modules, line


CHECK = """
import importlib, importlib.util, json, pkgutil, sys
import jhub_suspend
modules = sorted(
    m.name
    for m in pkgutil.walk_packages(jhub_suspend.__path__, "jhub_suspend.")
    if not m.name.endswith(".__main__")  # (those run their command)
)
for name in modules:
    importlib.import_module(name)
print(json.dumps({
    "file": jhub_suspend.__file__,
    "modules": modules,
    "left_out_found": [m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None],
    "test_tools_loaded": sorted(m for m in sys.modules if m.split(".")[0] in %r),
}))
"""


def test_the_wheel_works_in_a_clean_environment(venv: Path, tmp_path: Path) -> None:
    python = venv / "bin" / "python"
    out = _run([python, "-c", CHECK % sorted(TEST_TOOLS), *LEFT_OUT], cwd=tmp_path)
    found = json.loads(out)
    assert Path(found["file"]).is_relative_to(venv), found["file"]
    assert {"jhub_suspend.spawner", "jhub_suspend.service.app", "jhub_suspend.agent.app"} <= set(
        found["modules"]
    )
    assert found["left_out_found"] == []
    assert found["test_tools_loaded"] == []
    # the spawner is where JupyterHub looks for it by name
    out = _run(
        [
            python,
            "-c",
            textwrap.dedent(
                """
                from importlib.metadata import entry_points
                (ep,) = entry_points(group="jupyterhub.spawners", name="suspending-kubespawner")
                print(ep.load().__name__)
                """
            ),
        ],
        cwd=tmp_path,
    )
    assert out.strip() == "SuspendingKubeSpawner"
    for command, says in (
        ("jhub-suspend", "usage: jhub-suspend"),
        ("jhub-suspend-service", "--SuspendService.prometheus_url"),
        ("jhub-suspend-agent", "--NodeAgent.repository"),
    ):
        assert says in _run([venv / "bin" / command, "--help"], cwd=tmp_path), command
    assert not (venv / "bin" / "jhub-suspend-localcluster").exists()
    lab = venv / "share" / "jupyter" / "labextensions" / "jhub-suspend"
    assert (lab / "package.json").is_file() and (lab / "static" / "remoteEntry.js").is_file()
