"""Shared test helpers.

Tests that need root, CRIU or a server never skip themselves: if something is missing they fail
with a message that says what, so CI cannot pass by skipping.
"""

import os
import shutil

import pytest

CRIU = os.environ.get("JHUB_SUSPEND_CRIU", "/opt/jhub-suspend/bin/criu")


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces, CRIU); run it as root, as CI does")


def require_command(path_or_name: str, hint: str) -> str:
    found = path_or_name if os.access(path_or_name, os.X_OK) else shutil.which(path_or_name)
    if not found:
        pytest.fail(f"{path_or_name} is missing: {hint}")
    return found


@pytest.fixture
def criu_path() -> str:
    require_root()
    return require_command(CRIU, "run scripts/install.sh, which installs CRIU >= 4.2")
