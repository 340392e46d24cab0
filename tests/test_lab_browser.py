"""jhub-suspend inside JupyterLab, in a real browser (Debian's headless Chromium, Playwright).

One story on the demo hub, with a policy that warns an idle server at once: the user works in
JupyterLab, sees the warning as a Lab notification and clicks "Keep it running"; the service
records the opt-out and the warning goes away. Then the server is suspended (by the service's
API, as the policy would), Lab says so and offers "Resume", and Resume brings the server back
with its kernel's variables. Suspended again, Discard on the home page starts it fresh; a plain
stop then gets Lab's usual "not running" dialog.
"""

from __future__ import annotations

import pytest
from conftest import module_hub

from jhub_suspend.testing.browser import login, publish_screenshots, shot
from jhub_suspend.testing.hubapi import HubAPI
from jhub_suspend.testing.kernel import KernelClient
from jhub_suspend.testing.waiting import wait_for

pytestmark = pytest.mark.slow

USER = "lea"
# Short windows, so a quiet server counts as idle within seconds; the activity timeout is long
# (no automatic suspension during the test) and inside warn_before, so the idle server is warned.
POLICY = {
    "cycle_interval": 3,
    "idle_window": 12,
    "query_step": 2,
    "rate_window": 6,
    "min_coverage": 0.7,
    "max_metrics_age": 20,
    "activity_timeout": 900,
    "warn_before": 3600,
    # Lab's page load keeps the server busy for a few seconds; that still counts as idle here,
    # so the warning does not come and go while the test looks at it.
    "cpu_threshold": 0.6,
}
SERVICE_CONFIG = "\n".join(f"c.SuspendService.{k} = {v!r}" for k, v in POLICY.items())
LAB_EXTENSION = "labextensions/jhub-suspend/"


hub = module_hub(service_config=SERVICE_CONFIG)


def toast(page, text: str):
    """A JupyterLab notification toast that contains ``text``."""
    return page.locator(".Toastify__toast", has_text=text)


async def suspend(service: HubAPI) -> None:
    """Suspend USER's server through the service's API (as the policy would), and wait."""
    accepted = await service.request("POST", f"servers/{USER}/suspend")
    path = accepted["status_url"].split("/services/suspend/api/", 1)[1]

    async def finished() -> bool:
        op = await service.request("GET", path)
        assert op["status"] in ("running", "succeeded"), op
        return op["status"] == "succeeded"

    await wait_for(finished, f"the suspension of {USER}'s server did not finish", 180)


async def test_warning_keep_running_and_resume_inside_jupyterlab(hub, browser):
    hubapi = HubAPI(hub.api_url, hub.service_token)
    service = HubAPI(f"{hub.url}/services/suspend/api", hub.service_token)
    await hubapi.ensure_user(USER)
    errors: list[str] = []
    context, page = await login(browser, hub.url, USER, hub.user_password, errors)
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    await hubapi.start_server(USER)
    kernel = KernelClient(f"{hub.url}/user/{USER}/", hub.service_token)
    await kernel.start()
    await kernel.execute("answer = 6 * 7")

    # 1. The policy warns. The hub's pages show a banner with a countdown and Keep it running.
    banner = page.locator("#jhs-banner .jhs-warning")

    async def banner_shown() -> bool:
        await page.goto(f"{hub.url}/hub/home")
        await page.wait_for_selector("body[data-jhs-ready]")
        return await banner.is_visible()

    await wait_for(banner_shown, "the hub's pages never showed the warning banner", 120)
    assert "Your server is idle and will be suspended in" in (await banner.text_content() or "")
    left = await page.text_content("#jhs-banner .jhs-time-left") or ""
    assert " min " in left, left  # e.g. "14 min 32 s", counting down
    assert await banner.get_by_role("button", name="Keep it running").is_visible()
    await shot(page, "home-warning")

    # JupyterLab loads the extension from the server's labextensions (page config).
    await page.goto(f"{hub.url}/user/{USER}/lab")
    await page.wait_for_selector(".jp-LabShell")
    config = await page.evaluate(
        "JSON.parse(document.getElementById('jupyter-config-data').textContent)"
    )
    assert "jhub-suspend" in [e["name"] for e in config["federated_extensions"]]

    # ... and so does Lab, with the time left and "Keep it running".
    warning = toast(page, "will be suspended in")
    try:
        await warning.wait_for(state="visible", timeout=120_000)
    except Exception as e:
        listed = await service.request("GET", f"servers?user={USER}")
        raise AssertionError(
            f"no warning in Lab; the service lists {listed}; console: {console}"
        ) from e
    text = await warning.text_content() or ""
    assert "This server is idle and will be suspended in about" in text, text
    assert "Its kernels are saved and come back when you resume it." in text, text
    keep = warning.get_by_role("button", name="Keep it running")
    await keep.click(trial=True)  # waits until the toast has stopped sliding in
    await shot(page, "lab-warning")
    listed = (await service.request("GET", f"servers?user={USER}"))["servers"][0]
    assert listed["keep_running"] is None

    # 2. Keep it running: the service records the opt-out, and the warning goes away.
    await keep.click()
    await toast(page, "will be kept running").wait_for(state="visible")

    async def kept_and_no_longer_warned() -> bool:
        # the listing is the last policy cycle's: it shows the opt-out from the next cycle on
        s = (await service.request("GET", f"servers?user={USER}"))["servers"][0]
        return bool(s["keep_running"] and s["keep_running"]["since"]) and s["warning"] is None

    await wait_for(kept_and_no_longer_warned, "the service did not record Keep it running")
    await warning.wait_for(state="hidden", timeout=60_000)

    # 3. The server is suspended (as the policy would, through the service's API): Lab says so
    # and offers Resume.
    await suspend(service)
    # Lab loses its server: instead of the hub's modal "not running, restart it?" dialog, it
    # says the server was suspended and offers Resume.
    notice = toast(page, "This server was suspended")
    await notice.wait_for(state="visible", timeout=90_000)
    assert "resume it to carry on where you left off" in (await notice.text_content() or "")

    async def lab_noticed() -> bool:
        # Lab may lose the connection while the listing still says suspending, or once it
        # says suspended: either way its connection-lost handler took jhub-suspend's path
        # (not the hub's modal dialog), which is what this checks.
        return any(
            f"lost the server, which is {state}" in line
            for line in console
            for state in ("suspending", "suspended")
        )

    await wait_for(lab_noticed, "Lab never reported the lost connection", 90)
    assert not await page.locator(".jp-Dialog").count()
    resume = notice.get_by_role("button", name="Resume")
    await resume.click(trial=True)
    await shot(page, "lab-suspended")

    # 4. Resume: through the hub's spawn (the restore), back into Lab, the variable is there.
    await resume.click()
    await page.wait_for_url(f"**/user/{USER}/lab**", timeout=180_000)
    await page.wait_for_selector(".jp-LabShell")
    model = await hubapi.server(USER)
    assert model and model["ready"], model
    assert await kernel.execute("print(answer)") == "42\n"

    # 5. Discard, on the home page of a suspended server: after a confirmation the saved session
    # is dropped and a fresh server starts; the old kernel and its variable are gone.
    await suspend(service)
    await page.goto(f"{hub.url}/hub/home")
    await page.wait_for_selector("body[data-jhs-ready=true]")
    await page.click(".jhs-discard")
    await page.locator("#jhs-confirm-ok", has_text="Discard and start fresh").click()
    await page.wait_for_url(f"**/user/{USER}/lab**", timeout=180_000)
    model = await hubapi.server(USER)
    assert model and model["ready"], model
    fresh = KernelClient(f"{hub.url}/user/{USER}/", hub.service_token)
    await fresh.start()
    assert await fresh.execute("print('answer' in globals())") == "False\n"

    # 6. A plain stop is not a suspension: when Lab loses that server it gets the hub's usual
    # "not running, restart it?" dialog, from the extension that replaced the hub's plugin.
    await page.wait_for_selector(".jp-LabShell")
    await hubapi.stop_server(USER)
    dialog = page.locator(".jp-Dialog", has_text="Server unavailable or unreachable")
    await dialog.wait_for(state="visible", timeout=90_000)
    assert "is not running" in (await dialog.text_content() or "")
    assert not await toast(page, "This server was suspended").count()
    await dialog.get_by_role("button", name="Dismiss").click()

    ours = [e for e in errors if LAB_EXTENSION in e]
    assert not ours, f"errors from the jhub-suspend Lab extension: {ours}"
    await context.close()
    publish_screenshots("home-warning", "lab-warning", "lab-suspended")
