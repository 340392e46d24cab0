"""The product wheel: what hub images and user images install.

It is built from the files the images' Dockerfiles copy, checked for what it must not hold (the
local cluster, the test helpers, the demo, anything importing a test tool), then installed with
its dependencies into a clean virtual environment, where every module it ships must import and
its commands must run, without this checkout on the path.
"""

from __future__ import annotations

import ast
import hashlib
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
# uPlot, vendored: the admin page's charts (its licence and version with it)
VENDORED = ROOT / "jhub_suspend" / "service" / "static" / "vendor" / "uplot"
UPLOT = ("uPlot.iife.min.js", "uPlot.min.css", "LICENSE", "VERSION")
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
    requires, at the versions the suite runs with (constraints.txt)."""
    path = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", path], cwd=path.parent)
    pip_install = [path / "bin" / "python", "-m", "pip", "install", "-q"]
    _run([*pip_install, "-c", ROOT / "constraints.txt", wheel], cwd=path.parent, timeout=600)
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
    for name in UPLOT:
        assert f"jhub_suspend/service/static/vendor/uplot/{name}" in names, name
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


# The admin page as the installed service serves it: every script and style sheet of its own
# that the page loads (uPlot among them), fetched from the service.
SERVE = """
import asyncio, hashlib, json, re
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from traitlets.config import Config
from jhub_suspend.service import ui
from jhub_suspend.service.app import SuspendService

async def main():
    cfg = Config()
    cfg.SuspendService.prometheus_url = "http://127.0.0.1:9"
    cfg.SuspendService.hub_api_token = "not-used"
    svc = SuspendService(config=cfg)
    svc.prepare()
    html = ui.page(svc, "jhub-suspend: servers", ui.ADMIN_BODY, "admin", "admin.js")
    prefix = svc.service_prefix
    paths = re.findall(r'(?:src|href)="(' + re.escape(prefix) + r'static/[^"]+)"', html)
    (sock,) = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(svc.make_app())
    server.add_sockets([sock])
    base = "http://127.0.0.1:%d" % sock.getsockname()[1]
    served = {}
    for path in paths:
        r = await AsyncHTTPClient().fetch(base + path, raise_error=False)
        served[path[len(prefix):]] = [r.code, hashlib.sha256(r.body).hexdigest()]
    server.stop()
    print(json.dumps(served))

asyncio.run(main())
"""


def test_the_installed_service_serves_the_admin_charts(venv: Path, tmp_path: Path) -> None:
    served = json.loads(_run([venv / "bin" / "python", "-c", SERVE], cwd=tmp_path))
    static = ROOT / "jhub_suspend" / "service" / "static"
    for path in ("static/vendor/uplot/uPlot.iife.min.js", "static/vendor/uplot/uPlot.min.css"):
        assert path in served, (path, served)
    for path, (code, digest) in served.items():
        assert code == 200, path
        body = (static / path.removeprefix("static/")).read_bytes()
        assert digest == hashlib.sha256(body).hexdigest(), path


def test_the_vendored_uplot_is_the_version_it_says() -> None:
    """scripts/vendor-uplot.sh writes VERSION; the library's own banner names its version."""
    version = (VENDORED / "VERSION").read_text().split()[1]
    assert f"(v{version})" in (VENDORED / "uPlot.iife.min.js").read_text()[:200]
    assert "MIT License" in (VENDORED / "LICENSE").read_text()
    assert sorted(p.name for p in VENDORED.iterdir()) == sorted(UPLOT)
