"""One test per private JupyterHub or KubeSpawner symbol that jhub_suspend.upstream reaches.

Each fails when upstream renames, removes or reshapes the symbol; see upstream.py's docstring
for why each is used.
"""

import inspect

import pytest
from jupyterhub import _xsrf_utils
from jupyterhub.services.auth import HubAuthenticated, HubOAuthenticated
from jupyterhub.spawner import Spawner
from kubespawner import KubeSpawner

from jhub_suspend import upstream
from jhub_suspend.spawner import SuspendingKubeSpawner


def test_kubespawner_start_is_the_coroutine_its_public_start_runs():
    method = getattr(KubeSpawner, upstream.KUBESPAWNER_START)
    assert inspect.iscoroutinefunction(method)
    assert list(inspect.signature(method).parameters) == ["self"]
    # The public start() runs self._start(), so the override is what a hub start runs.
    assert "self._start()" in inspect.getsource(KubeSpawner.start)
    assert SuspendingKubeSpawner._start is not KubeSpawner._start


async def test_the_public_start_calls_the_override(mock_kubeconfig, monkeypatch):
    """KubeSpawner's public start() ends in SuspendingKubeSpawner._start."""
    called = []

    async def fake_start_or_restore(self):
        called.append(self)
        return "http://10.0.0.1:8888"

    monkeypatch.setattr(SuspendingKubeSpawner, "_start_or_restore", fake_start_or_restore)
    s = SuspendingKubeSpawner(_mock=True)
    assert await s.start() == "http://10.0.0.1:8888"
    assert called == [s]


def test_start_watching_pods():
    method = KubeSpawner._start_watching_pods
    assert inspect.iscoroutinefunction(method)
    params = inspect.signature(method).parameters
    assert next(iter(params)) == "self"
    assert all(p.default is not p.empty for name, p in params.items() if name != "self")


def test_get_pod_url():
    method = KubeSpawner._get_pod_url
    assert not inspect.iscoroutinefunction(method)
    assert list(inspect.signature(method).parameters) == ["self", "pod"]


def test_spawner_log_name():
    assert isinstance(Spawner.__dict__["_log_name"], property)


def test_spawner_stop_pending():
    assert Spawner._stop_pending is False


def test_hub_auth_user_cache_is_what_current_user_returns():
    source = inspect.getsource(HubAuthenticated.get_current_user)
    assert "_hub_auth_user_cache" in source

    class Handler:
        pass

    h = Handler()
    upstream.set_current_user(h, {"name": "alice"})
    assert h._hub_auth_user_cache == {"name": "alice"}
    # get_current_user returns the cache without asking the hub again.
    assert HubAuthenticated.get_current_user(h) == {"name": "alice"}


def test_xsrf_token_id():
    assert isinstance(inspect.getattr_static(HubOAuthenticated, "_xsrf_token_id"), property)


def test_get_xsrf_token_cookie(monkeypatch):
    fn = _xsrf_utils._get_xsrf_token_cookie
    assert list(inspect.signature(fn).parameters) == ["handler"]

    class Handler:
        _xsrf_token_id = "login-1"

    monkeypatch.setattr(_xsrf_utils, "_get_xsrf_token_cookie", lambda h: (b"t", "login-1"))
    assert upstream.xsrf_cookie_is_current(Handler())
    monkeypatch.setattr(_xsrf_utils, "_get_xsrf_token_cookie", lambda h: (b"t", "login-0"))
    assert not upstream.xsrf_cookie_is_current(Handler())
    monkeypatch.setattr(_xsrf_utils, "_get_xsrf_token_cookie", lambda h: (None, None))
    assert not upstream.xsrf_cookie_is_current(Handler())


@pytest.mark.parametrize("name", ["_start", "_start_watching_pods", "_get_pod_url"])
def test_the_spawner_reaches_kubespawner_privates_only_through_upstream(name):
    import jhub_suspend.service.handlers as handlers
    import jhub_suspend.service.ui as ui
    import jhub_suspend.spawner as spawner

    for module in (spawner, handlers, ui):
        source = inspect.getsource(module)
        calls = [f"self.{name}(", f"super().{name}("]
        assert not any(c in source for c in calls), (module.__name__, name)
