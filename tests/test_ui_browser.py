"""The hub UI in a real browser: Debian's headless Chromium driven by Playwright against the demo
hub on the local cluster.

One story: a user logs in and starts a server, runs code in a kernel, clicks Suspend and sees
Suspended while the pod is gone, clicks Resume, watches the restore's progress, and finds the
kernel's variable back. Suspended again, its checkpoint image is deleted: Resume starts a fresh
server and the home page says why. A named server is suspended and resumed from its row. The
same run opens the admin page as the admin, and as the user (403).
Screenshots go to test-artifacts/ (see jhub_suspend.testing.browser).
"""

from __future__ import annotations

import contextlib

import pytest
from conftest import module_hub
from kubernetes_asyncio.client.exceptions import ApiException

from jhub_suspend import images
from jhub_suspend.checkpoints import pinned_image
from jhub_suspend.suspension import server_model
from jhub_suspend.testing.browser import login, publish_screenshots, shot
from jhub_suspend.testing.hubapi import HubAPI
from jhub_suspend.testing.kernel import KernelClient
from jhub_suspend.testing.waiting import wait_for

pytestmark = pytest.mark.slow

USER = "ana"
# The pending page is shown at once (not after 10 s), so a restore of a few seconds shows on it.
HUB_CONFIG = 'c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}'
SERVICE_CONFIG = "c.SuspendService.cycle_interval = 3"


hub = module_hub(extra_config=HUB_CONFIG, service_config=SERVICE_CONFIG)


async def pod_gone(core, name: str) -> bool:
    try:
        await core.read_namespaced_pod(name, "default")
    except ApiException as e:
        if e.status == 404:
            return True
        raise
    return False


async def test_suspend_and_resume_in_the_browser(hub, core, browser, cluster):
    errors: list[str] = []
    api = HubAPI(hub.api_url, hub.service_token)
    await api.ensure_user(USER)
    context, page = await login(browser, hub.url, USER, hub.user_password, errors)

    # 1. Start a server from the home page.
    await page.goto(f"{hub.url}/hub/home")
    await page.click("#start")
    await page.wait_for_url(f"**/user/{USER}/**", timeout=120_000)

    # 2. Run code in its kernel, through the server's own API.
    kernel = KernelClient(f"{hub.url}/user/{USER}/", hub.service_token)
    await kernel.start()
    await kernel.execute("secret = 6 * 7")

    # 3. Suspend from the home page; the pod goes, the page says Suspended.
    await page.goto(f"{hub.url}/hub/home")
    # The first visit logs in to the service (one navigation through the hub's OAuth).
    await page.wait_for_url(f"{hub.url}/hub/home")
    suspend = page.locator("#jhs-alerts ~ .container .jhs-suspend, .jhs-suspend").first
    await suspend.wait_for(state="visible")
    await page.wait_for_selector("body[data-jhs-ready=true]")
    assert await suspend.is_enabled()

    # The keep-running switch shows once the service's cycle has listed the server.
    switch = page.locator(".jhs-keep-running input")

    async def switch_shown():
        if await switch.is_visible():
            return True
        await page.reload()
        await page.wait_for_selector("body[data-jhs-ready]")
        return False

    await wait_for(switch_shown, "the keep-running switch never showed", 30)
    await switch.check()
    await page.wait_for_selector("#jhs-alerts .alert-success")
    assert "kept running" in (await page.text_content("#jhs-alerts .alert-success") or "")
    await shot(page, "home-running")
    await switch.uncheck()
    await page.wait_for_selector("#jhs-alerts .alert-success >> text=may be suspended")
    await suspend.click()
    await page.wait_for_selector(".jhs-suspended-badge", state="visible", timeout=150_000)
    assert await pod_gone(core, f"jupyter-{USER}"), "the pod still exists after Suspend"
    checkpoint = await page.text_content(".jhs-checkpoint")
    assert "MB" in (checkpoint or ""), checkpoint
    start = page.locator("#start")
    assert "Resume" in (await start.text_content() or "")
    assert await page.locator(".jhs-discard").is_visible()
    await page.wait_for_selector("body[data-jhs-ready=true]")
    await shot(page, "home-suspended")

    # 4. Resume: the pending page shows the restore, then the kernel has its variable.
    await start.click()
    await page.wait_for_url("**/hub/spawn-pending/**")
    step = page.locator(".jhs-restore-step").first
    await step.wait_for(state="visible", timeout=60_000)
    text = await step.text_content() or ""
    assert text.startswith("Restoring your saved session: pulling a checkpoint of"), text
    assert "MB" in text, text
    with contextlib.suppress(Exception):  # the page may already be on its way to the server
        await shot(page, "spawn-pending-restore")
    await page.wait_for_url(f"**/user/{USER}/**", timeout=120_000)
    assert (await kernel.execute("print(secret)")).strip() == "42"
    assert not await page.locator(".jhs-restore-failed").count()

    # 5. A restore that cannot succeed (the checkpoint's image was deleted meanwhile) says so:
    # a fresh server starts, and the home page tells why the saved session did not come back.
    await page.goto(f"{hub.url}/hub/home")
    await page.wait_for_selector("body[data-jhs-ready=true]")
    await page.locator(".jhs-suspend").first.click()
    await page.wait_for_selector(".jhs-suspended-badge", state="visible", timeout=150_000)
    state = (await server_model(api.request, USER))["state"]
    digest = state["jhub_suspend"]["checkpoint"]["digest"]
    await images.delete(
        pinned_image(cluster.checkpoint_repository, "default", state["pod_name"], digest)
    )
    await page.click("#start")
    await page.wait_for_url(f"**/user/{USER}/**", timeout=120_000)
    await page.goto(f"{hub.url}/hub/home")
    last_error = page.locator(".jhs-last-error")
    await last_error.wait_for(state="visible")
    text = " ".join((await last_error.text_content() or "").split())
    assert text.startswith("Last restore failed: Your saved session could not be restored"), text
    assert "the saved checkpoint no longer exists in the registry" in text, text
    assert "A fresh server was started on the same volume" in text, text
    assert not await page.locator(".jhs-suspended-badge").count()
    await shot(page, "home-restore-failed")

    # 6. A named server has the same controls in its row of the named-servers table.
    name = "exp"
    await api.start_server(USER, name)
    named = KernelClient(f"{hub.url}/user/{USER}/{name}/", hub.service_token)
    await named.start()
    await named.execute("trial = 'named'")
    await page.goto(f"{hub.url}/hub/home")
    await page.wait_for_selector("body[data-jhs-ready=true]")
    row = page.locator(f'tr.home-server-row[data-server-name="{name}"]')
    await row.locator(".jhs-suspend").click()
    await row.locator(".jhs-suspended-badge").wait_for(state="visible", timeout=150_000)
    assert await pod_gone(core, f"jupyter-{USER}--{name}"), "the named server's pod still exists"
    resume = row.locator(".start-server")
    assert (await resume.text_content() or "").strip() == "resume"
    await resume.click()
    await page.wait_for_url(f"**/user/{USER}/{name}/**", timeout=120_000)
    assert await named.execute("print(trial)") == "named\n"
    await api.stop_server(USER, name)

    # The admin page: a user gets the hub-styled 403 page.
    resp = await page.goto(f"{hub.url}/services/suspend/")
    await page.wait_for_url(f"{hub.url}/services/suspend/")
    resp = await page.reload()
    assert resp is not None and resp.status == 403
    assert "403" in (await page.text_content("#jhs-forbidden") or "")
    assert await page.locator("nav.navbar").count() == 1
    await shot(page, "admin-forbidden")
    await context.close()

    # ... and the admin sees every server.
    context, page = await login(browser, hub.url, "admin", hub.admin_password, errors, width=1400)
    await page.goto(f"{hub.url}/services/suspend/")
    await page.wait_for_url(f"{hub.url}/services/suspend/")
    row = page.locator(f'#jhs-servers tbody tr[data-user="{USER}"][data-server-name=""]')
    await row.wait_for(state="visible")
    await page.wait_for_selector("#jhs-chart-cpu .uplot, #jhs-chart-cpu .jhs-chart-empty")
    # the service accepted every series the page asks for, the hours' running totals included
    await page.wait_for_selector("#jhs-chart-hours .uplot, #jhs-chart-hours .jhs-chart-empty")
    await shot(page, "admin")
    await context.close()

    assert not errors, f"JavaScript errors: {errors}"
    publish_screenshots(
        "home-running",
        "home-suspended",
        "spawn-pending-restore",
        "home-restore-failed",
        "admin-forbidden",
        "admin",
    )
    await api.stop_server(USER)
