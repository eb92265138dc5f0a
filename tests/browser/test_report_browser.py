"""The self-contained HTML report in headless Chromium, offline: every chart draws, every tooltip shows
text, and nothing but the file is requested, even with hostile names in the study."""

from __future__ import annotations

import asyncio
import html
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from helpers.browser import CHROMIUM_ARGS, chromium_path
from helpers.report import URL_NAMES, without_bundle

HOVER_POINTS_PER_CHART = 40
# the centres of a chart's marks (Vega draws each item of a mark group as one element), at most
# ``limit`` of them spread over all, in viewport coordinates once the chart is scrolled into view
_MARK_CENTRES = """([selector, limit]) => {
  const chart = document.querySelector(selector);
  chart.scrollIntoView({ block: "center" });
  const items = [...chart.querySelectorAll("svg g.role-mark > *")];
  const step = Math.max(1, items.length / limit);
  const picked = [];
  for (let i = 0; i < items.length && picked.length < limit; i += step) picked.push(items[Math.floor(i)]);
  return picked.map((item) => item.getBoundingClientRect())
    .filter((box) => box.width + box.height > 0 && box.top >= 0 && box.bottom <= innerHeight)
    .map((box) => [box.left + box.width / 2, box.top + box.height / 2]);
}"""
_TOOLTIP = "document.getElementById('vg-tooltip-element')?.innerHTML ?? ''"


async def _open_offline(path: Path) -> dict:
    from playwright.async_api import async_playwright

    url = path.as_uri()
    seen: dict = {"blocked": [], "requested": [], "errors": [], "dialogs": [], "tooltips": set(), "hovered": {}}

    async def only_the_file(route) -> None:
        if route.request.url == url:
            await route.continue_()
        else:
            seen["blocked"].append(route.request.url)
            await route.abort()

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1200, "height": 900})
            await context.route("**/*", only_the_file)
            await context.set_offline(True)
            context.on("request", lambda request: seen["requested"].append(request.url) if request.url != url else None)
            page = await context.new_page()
            page.on("console", lambda message: seen["errors"].append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: seen["errors"].append(str(error)))

            async def refuse(dialog) -> None:
                seen["dialogs"].append(dialog.message)
                await dialog.dismiss()

            page.on("dialog", refuse)
            await page.goto(url)
            await page.wait_for_function(
                "[...document.querySelectorAll('div.chart')].every((div) => div.querySelector('svg'))", timeout=60_000
            )
            seen["containers"] = await page.locator("div.chart").count()
            # vega-embed adds the <svg>; a chart counts once Vega has drawn marks into it
            seen["rendered"] = await page.evaluate(
                "[...document.querySelectorAll('div.chart')]"
                ".filter((div) => div.querySelector('svg g.mark-rect, svg g.mark-symbol, svg g.mark-line')).length"
            )
            seen["images"] = await page.evaluate(
                "[...document.images].filter((img) => img.complete && img.naturalWidth > 0).length"
            )
            # a tooltip's markup is made when it shows: hover the marks of every chart
            for chart in await page.eval_on_selector_all("div.chart", "(divs) => divs.map((div) => div.id)"):
                points = await page.evaluate(_MARK_CENTRES, [f"#{chart}", HOVER_POINTS_PER_CHART])
                seen["hovered"][chart] = 0
                for x, y in points:
                    await page.mouse.move(x, y)
                    tooltip = await page.evaluate(_TOOLTIP)
                    if tooltip:
                        seen["tooltips"].add(tooltip)
                        seen["hovered"][chart] += 1
            await page.wait_for_timeout(500)  # time for any fetch a tooltip started to be requested
            seen["images_after"] = await page.evaluate("document.images.length")
        finally:
            await browser.close()
    return seen


def test_report_renders_offline_in_a_browser(hostile_report: str, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    path.write_text(hostile_report, encoding="utf-8")
    # other tests' synchronous Playwright keeps an event loop on this thread: run on another
    with ThreadPoolExecutor(max_workers=1) as pool:
        seen = pool.submit(asyncio.run, _open_offline(path)).result()
    assert seen["blocked"] == [] and seen["requested"] == []  # nothing but the file, even with every tooltip shown
    assert seen["errors"] == []
    assert seen["dialogs"] == []  # the hostile image name never ran
    assert seen["containers"] == len(re.findall(r'<div class="chart"', hostile_report)) > 0
    assert seen["rendered"] == seen["containers"]
    assert seen["images"] == len(re.findall(r"<img ", without_bundle(hostile_report))) > 0
    assert all(seen["hovered"].values()), seen["hovered"]  # every chart showed tooltips
    assert seen["images_after"] == seen["images"]
    for tooltip in seen["tooltips"]:
        assert "<img" not in tooltip and "<h2" not in tooltip, tooltip
    names = "\n".join(seen["tooltips"])
    for form in URL_NAMES:  # each name was shown, as text
        assert html.escape(form.split("{i}")[0], quote=False) in names, form
