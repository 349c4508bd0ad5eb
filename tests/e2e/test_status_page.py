"""The status page as an operator sees it: a real headless Chromium renders it mid-migration.

The screenshot is kept as a test artifact, in the folder named by STATICIPD_TEST_ARTIFACTS
(else the test's temporary folder); the test prints its path.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(120)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


async def chromium(profile: Path, *args: str) -> str:
    """Run headless Chromium with `args`; its standard output (the DOM for --dump-dom)."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--no-first-run", f"--user-data-dir={profile}", *args,
    ]  # fmt: skip
    with anyio.fail_after(60):
        done = await anyio.run_process(command, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs a headless browser: Debian's `chromium` (apt-get install chromium)",
)
async def test_status_page_renders_in_a_headless_browser(
    e2e: SimpleNamespace, tmp_path: Path
) -> None:
    """Mid-migration a browser shows the sandbox banner, the funnel chart with its areas and
    legend, a row per wave and the log's head, and no account id; the chart's history is the
    same after a restart."""
    artifacts = Path(os.environ.get("STATICIPD_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "status-page.png"
    async with e2e.running(tmp_path / "run", accounts=30, time_scale=2000, seed=5) as run:
        await run.enrol()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.users.authenticate_all)
            with anyio.fail_after(40):
                while run.funnel()["static"] < 8:
                    await anyio.sleep(0.05)
            url = f"{run.url}/"
            dom = await chromium(tmp_path / "profile", "--dump-dom", url)
            await chromium(
                tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,1600", url
            )
            print(f"\nstatus page screenshot: {shot}")
            await run.wait_done(timeout=40)
            await run.wait_quiet()
            before = run.daemon.live.projection.history if run.daemon else None
            await run.stop_daemon()
            daemon = await run.start_daemon()
            after = daemon.live.projection.history
            tg.cancel_scope.cancel()

    assert 'id="sandbox"' in dom
    assert "SANDBOX PROVIDER" in dom
    assert "time runs ×2000" in dom
    chart = dom.split('<section id="funnel">', 1)[1].split("</section>", 1)[0]
    areas = re.findall(r'<path class="area" data-state="(\w+)"', chart)
    assert {"static", "dynamic"} <= set(areas), areas
    assert "accounts</text>" in chart  # the y axis label
    assert "time (UTC" in chart  # the x axis label
    assert chart.count("<li>") == 8  # the legend: one entry per state
    waves = dom.split('<table class="waves" id="waves">', 1)[1].split("</table>", 1)[0]
    assert re.findall(r"<tr><th>(wave-\d)</th>", waves) == ["wave-1", "wave-2"]
    assert re.search(r'<table id="log"><tbody><tr><th>head</th><td>position <b>[\d,]+</b>', dom)
    assert not [a for a in run.account_ids if a in dom]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert before is not None
    assert after == before
