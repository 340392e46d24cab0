"""constraints.txt and setup.cfg agree: scripts/install.sh installs with the constraints, so
every requirement must be pinned, and pinned within setup.cfg's bounds."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "update_constraints", ROOT / "scripts/update-constraints.py"
)
assert _spec and _spec.loader
generator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generator)
HOW = "regenerate it: .venv/bin/python scripts/update-constraints.py"


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"[A-Za-z0-9._-]+", name), line
            assert canonicalize_name(name) not in found, line
            found[canonicalize_name(name)] = version
    return found


def test_every_requirement_is_pinned_within_its_bounds() -> None:
    pinned = pins()
    for req in generator.project_requirements():
        name = canonicalize_name(req.name)
        assert name in pinned, f"constraints.txt does not pin {req.name}: {HOW}"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pinned[name]}, outside setup.cfg's {req}: {HOW}"
        )


def test_the_upstreams_whose_private_parts_are_used_have_upper_bounds() -> None:
    reqs = {canonicalize_name(r.name): r for r in generator.project_requirements()}
    for name in ("jupyterhub", "jupyterhub-kubespawner"):
        assert any(s.operator in ("<", "<=", "~=", "==") for s in reqs[name].specifier), reqs[name]


def test_install_sh_installs_with_the_constraints() -> None:
    install = (ROOT / "scripts" / "install.sh").read_text()
    assert re.search(r'pip" install [^\n]*-c "\$repo/constraints\.txt" -e "\$repo\[', install)
    # its npm packages at fixed versions
    commands = [c for c in install.replace("\\\n", " ").splitlines() if " npm install " in c]
    assert commands
    for command in commands:
        packages = [w for w in command.split() if re.fullmatch(r'"?[a-z][\w.-]*@\S+', w)]
        assert packages, command


def test_the_generator_reads_every_extra() -> None:
    names = {canonicalize_name(r.name) for r in generator.project_requirements()}
    assert {"jupyterhub", "pytest", "ruff", "jupyterlab", "grpcio", "matplotlib"} <= names
    assert all(isinstance(r, Requirement) for r in generator.project_requirements())
