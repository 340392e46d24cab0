"""Every error of the product derives from one base, with one convention for "no answer"."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import jhub_suspend
from jhub_suspend.errors import NO_ANSWER, JhubSuspendError
from jhub_suspend.service.hubclient import HubClient, HubError

# The emulator, the test helpers and the demo are not the product.
NOT_PRODUCT = ("jhub_suspend.localcluster", "jhub_suspend.testing", "jhub_suspend.demo")


def product_errors() -> list[type[BaseException]]:
    found = set()
    for info in pkgutil.walk_packages(jhub_suspend.__path__, "jhub_suspend."):
        if info.name.startswith(NOT_PRODUCT) or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(cls, BaseException)
                and cls.__module__ == module.__name__
                and not cls.__name__.startswith("_")  # a module's own control flow
            ):
                found.add(cls)
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")


def test_every_product_error_derives_from_the_base():
    errors = product_errors()
    assert len(errors) > 20
    assert [c for c in errors if not issubclass(c, JhubSuspendError)] == []


async def test_no_answer_is_0_also_from_the_hub():
    client = HubClient("http://127.0.0.1:9/hub/api", "t")
    with pytest.raises(HubError) as err:
        await client.request("POST", "users/ann/server")
    assert err.value.status == NO_ANSWER == 0
    assert str(err.value) == err.value.message and "cannot reach the hub" in err.value.message
