"""The JupyterLab extension's packaging and module-federation contract, without a browser.

The browser story is tests/test_lab_browser.py; these check what JupyterLab relies on before a
page loads: jupyterlab_server finds the extension and its disabled plugin, the wheel installs
it where Lab looks, and the script registers a container whose ./extension module yields the
plugins, built from the application's own shared packages.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from jupyterlab_server.config import get_federated_extensions, get_page_config

ROOT = Path(__file__).resolve().parent.parent
LABEXTENSIONS = ROOT / "jhub_suspend" / "jupyter" / "labextensions"
EXT = LABEXTENSIONS / "jhub-suspend"
SCRIPT = EXT / "static" / "remoteEntry.js"


def node() -> str:
    found = shutil.which("node")
    if not found:
        pytest.fail("node is missing: run scripts/install.sh (configurable-http-proxy needs it)")
    return found


def test_jupyterlab_server_finds_the_extension_and_its_disabled_plugin(tmp_path):
    found = get_federated_extensions([str(LABEXTENSIONS)])
    ext = found["jhub-suspend"]
    assert (EXT / ext["jupyterlab"]["_build"]["load"]).is_file()
    assert ext["jupyterlab"]["_build"]["extension"] == "./extension"
    page = get_page_config([str(LABEXTENSIONS)], app_settings_dir=str(tmp_path))
    assert {"name": "jhub-suspend", "load": "static/remoteEntry.js"}.items() <= next(
        e for e in page["federated_extensions"] if e["name"] == "jhub-suspend"
    ).items()
    assert "@jupyterlab/hub-extension:connectionlost" in page["disabledExtensions"]


def test_the_wheel_installs_every_file_of_the_extension_where_lab_looks():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    installed = {}
    for target, files in cfg["options.data_files"].items():
        for f in files.split():
            installed[f] = target
    on_disk = {str(p.relative_to(ROOT)) for p in EXT.rglob("*") if p.is_file()}
    assert set(installed) == on_disk
    for source, target in installed.items():
        rel = Path(source).relative_to("jhub_suspend/jupyter").parent
        assert target == str(Path("share/jupyter") / rel)


def test_the_demo_lab_config_is_valid_json():
    page = json.loads(
        (ROOT / "jhub_suspend/demo/jupyter-config/labconfig/page_config.json").read_text()
    )
    assert page["disabledExtensions"]["@jupyterlab/apputils-extension:announcements"] is True


# Loads the script as JupyterLab's bootstrap does, with stand-ins for the shared packages.
CONTRACT = r"""
const assert = require("assert");
global.window = { location: { origin: "http://hub", pathname: "/user/ana/lab", search: "" } };
global.document = { getElementById: () => ({ textContent: JSON.stringify(CONFIG) }) };
const CONFIG = JSON.parse(process.argv[3]);
require(process.argv[2]);
const container = window._JUPYTERLAB["jhub-suspend"];
const application = {
  IConnectionLost: { name: "IConnectionLost" },
  JupyterLab: { IInfo: { name: "IInfo" } },
  ConnectionLost: function defaultConnectionLost() {},
};
const apputils = { showDialog: () => null, Dialog: {} };
const scope = {
  "@jupyterlab/application": { "4.6.6": { loaded: 1, get: () => Promise.resolve(() => application) } },
  "@jupyterlab/apputils": { "4.6.6": { loaded: 1, get: () => Promise.resolve(() => apputils) } },
};
(async () => {
  await container.init(scope);
  const factory = await container.get("./extension");
  const mod = factory();
  assert.strictEqual(mod.__esModule, true);
  const plugins = mod.default;
  const ids = plugins.map((p) => p.id);
  assert.deepStrictEqual(ids, ["jhub-suspend:notifications", "jhub-suspend:connectionlost"]);
  const lost = plugins[1];
  assert.strictEqual(lost.provides, application.IConnectionLost);  // the application's token
  assert.deepStrictEqual(lost.optional, [application.JupyterLab.IInfo]);
  const commands = [];
  const app = {
    commands: { addCommand: (id) => commands.push(id), execute: () => Promise.resolve() },
    restored: new Promise(() => {}),
  };
  const handler = lost.activate(app, null);
  plugins[0].activate(app);
  await assert.rejects(container.get("./other"), /has no module/);
  console.log(JSON.stringify({
    handler: handler === application.ConnectionLost ? "default" : typeof handler,
    commands,
  }));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def run_contract(tmp_path, config: dict) -> dict:
    script = tmp_path / "contract.js"
    script.write_text(CONTRACT)
    done = subprocess.run(
        [node(), str(script), str(SCRIPT), json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_script_parses():
    done = subprocess.run([node(), "--check", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_container_contract_on_a_hub_server(tmp_path):
    out = run_contract(
        tmp_path,
        {"hubPrefix": "/hub/", "hubUser": "ana", "hubServerUser": "ana", "baseUrl": "/user/ana/"},
    )
    # its own connection-lost handler, and the two commands its notifications use
    assert out == {
        "handler": "function",
        "commands": ["jhub-suspend:keep-running", "jhub-suspend:resume"],
    }


def test_outside_a_hub_it_keeps_labs_default_and_adds_nothing(tmp_path):
    out = run_contract(tmp_path, {"baseUrl": "/"})
    assert out == {"handler": "default", "commands": []}


def test_the_suite_runs_a_jupyterlab_the_docs_support():
    """docs/ui.md states the supported versions (4.0 to 4.x: apputils:notify is new in 4.0);
    the suite's notebooks run the JupyterLab of this environment (constraints.txt)."""
    from importlib.metadata import version

    assert (
        "**Supported JupyterLab versions: JupyterLab 4.0 to 4.x.**"
        in (ROOT / "docs" / "ui.md").read_text()
    )
    assert version("jupyterlab").split(".")[0] == "4"
    script = SCRIPT.read_text()
    shared = set(re.findall(r'importShared\("([^"]+)"\)', script))
    assert shared == {"@jupyterlab/application", "@jupyterlab/apputils"}, shared
