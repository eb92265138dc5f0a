#!/usr/bin/env python
"""The screenshots of the README and the docs (``docs/images/*.png``), taken from the running app.

Usage (from the repository root, with the project's Python)::

    .venv/bin/python scripts/screenshots.py                          # every image, DINOv2-S, into docs/images/
    .venv/bin/python scripts/screenshots.py --only compare,library   # some of them
    .venv/bin/python scripts/screenshots.py --model demo --only app,overview --out /tmp/shots

It starts ``streamlit run streamlit_app.py`` on a free localhost port, offline (``HF_HUB_OFFLINE=1``),
on the chosen model (``HEADSCOPE_MODEL``) and a study library in a temporary folder
(``HEADSCOPE_LIBRARY``), and drives Debian's headless Chromium (``/usr/bin/chromium``, or
``$HEADSCOPE_CHROMIUM``) through every page in one browser session, as a user would: the focus
head is L8H3 (DINOv2-S's most important head), the heavy stages are started where the page asks
for Start, the case study is saved to the library, and the Compare page gets the current analysis
as side A and a second study (``--side-b``) as side B. Every request that does not go to the local
server is blocked and counted. Each image is cropped to the part of its page the view is about,
scaled to at most ``MAX_WIDTH`` pixels and stored as a 256-colour palette PNG under ``MAX_BYTES``.

Side B of the Compare page, by default for DINOv2-S: the same model at 448 px on the same photos,
built once with ``python -m core analyze --model dinov2-s --img-size 448 --sample-photos`` into
``~/.cache/headscope/screenshots/`` (under ``$HEADSCOPE_CACHE`` when set) and reused afterwards.
Building it takes about 25 minutes on a 2-core machine.

How long it takes, measured on a 2-core machine with the converted DINOv2-S weights cached and side
B built: about 3 minutes for every image (the app analyses the 9 photos in stages on its worker:
first pass, exact sweep and pruning curve for about a minute, then the autoencoder, UMAP and the
case study's partial pruning of the top heads; more when the machine is busy), under a minute for
``--model demo --only app,overview``, and 2.5 minutes for every image on the demo model.

Exit status 0 when every image was written; 2 with one sentence on stderr when something failed
(Chromium missing, a page showing an error, a stage that never finished), naming the page. The
server is always stopped and the temporary library deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "images"
MAX_WIDTH = 1200
MAX_BYTES = 300 * 1024
VIEWPORT = {"width": 1500, "height": 6000}  # Streamlit scrolls inside its own container: a tall window shows it all
HERO_WIDTH = 1200  # the hero image shows the window itself, sidebar included
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    # this machine's network is closed: without these Chromium keeps dialling out
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# the images, in the order the tour takes them; the README and the docs name these files
IMAGES = (
    "head-importance", "attention-strength", "attention-patterns", "explanations", "case-study", "library", "compare",
    "app", "overview",
)
ERROR_SELECTORS = ('[data-testid="stException"]', '[data-testid="stAlertContentError"]')
STAGE_TIMEOUT_S = 45 * 60  # the whole analysis of a page, on a busy 2-core machine
SERVER_START_S = 120
PROGRESS_EVERY_S = 20


@dataclass(frozen=True)
class ModelRecipe:
    """What the tour does on a model: its focus head, the case study's library title, and how side B is built."""

    head: str | None
    case_title: str
    side_b_args: tuple[str, ...] = ()  # ``python -m core analyze`` arguments after ``--model``; () = --side-b only
    side_b_file: str = ""
    side_b_title: str = ""
    side_b_minutes: int = 0


RECIPES = {
    "dinov2-s": ModelRecipe(
        head="L8H3", case_title="DINOv2-S on the sample photos",
        side_b_args=("--img-size", "448", "--sample-photos"), side_b_file="dinov2-s-448.zip",
        side_b_title="DINOv2-S at 448 px on the sample photos", side_b_minutes=25,
    ),
    "demo": ModelRecipe(
        head=None, case_title="Demo ViT on the held-out digits",
        side_b_args=("--sample-photos",), side_b_file="demo-photos.zip",
        side_b_title="Demo ViT on the sample photos", side_b_minutes=1,
    ),
}


class ScreenshotFailed(Exception):
    """A sentence for the user: what failed and where."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the second study (side B of the Compare page) ------------------------------------


def side_b_bundle(model: str, given: Path | None) -> tuple[Path, str]:
    """The bundle of side B and its library title: ``given``, else the recipe's, built once into the cache."""
    if given is not None:
        if not given.is_file():
            raise ScreenshotFailed(f"--side-b {given} is not a file.")
        return given, given.stem
    recipe = RECIPES.get(model)
    if recipe is None or not recipe.side_b_args:
        raise ScreenshotFailed(f"The Compare and Library images on {model} need a second study: pass --side-b BUNDLE.zip.")
    # run as a file, the script's folder is on the path, not the repository; core imports torch (seconds): only
    # when side B is needed
    sys.path.insert(0, str(ROOT))
    from core.models.dinov2 import cache_dir

    path = cache_dir() / "screenshots" / recipe.side_b_file
    if path.is_file():
        say(f"side B: {path}")
        return path, recipe.side_b_title
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.partial.zip")  # a stopped build leaves no bundle behind
    command = [sys.executable, "-m", "core", "analyze", "--model", model, *recipe.side_b_args, "--out", str(partial)]
    say(
        f"Building side B of the Compare page once ({' '.join(command[1:])}); it takes about "
        f"{recipe.side_b_minutes} min on a 2-core machine, and later runs reuse {path}."
    )
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise ScreenshotFailed(f"Building side B failed (exit status {done.returncode}); its error is above.")
    partial.replace(path)
    return path, recipe.side_b_title


def add_to_library(bundle: Path, title: str, library: Path) -> None:
    command = [sys.executable, "-m", "core", "library", "add", str(bundle), "--title", title, "--library", str(library)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise ScreenshotFailed(f"Adding {bundle} to the library failed: {done.stderr.strip() or done.stdout.strip()}")


# --- the server -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def started_server(port: int, env: dict[str, str], log_path: Path) -> Iterator[str]:
    """``streamlit run`` of the app on ``port``; yields its base URL once healthy, and always stops it."""
    command = [
        sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
        "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_for_health(url, proc, log_path)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=90)  # the app stops its analysis workers after their batch
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_for_health(url: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise ScreenshotFailed(f"streamlit exited with status {proc.returncode} before serving:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise ScreenshotFailed(f"streamlit did not answer its health check on {url} within {SERVER_START_S} s.")


def chromium_path() -> str:
    path = os.environ.get("HEADSCOPE_CHROMIUM") or "/usr/bin/chromium"
    if not os.path.isfile(path):
        raise ScreenshotFailed(
            f"Chromium is not at {path}: install Debian's chromium (apt-get install chromium) or point "
            "HEADSCOPE_CHROMIUM at a Chromium executable."
        )
    return path


# --- the browser tour -----------------------------------------------------------------

# Locate the scrolling container of an element and put the element near the top of the window, below
# Streamlit's header (60 px), so that a clip in window coordinates holds it.
_SCROLL_TO = """(el) => {
    el.scrollIntoView({block: "start"});
    let box = el.parentElement;
    while (box && !(box.scrollHeight > box.clientHeight && /(auto|scroll)/.test(getComputedStyle(box).overflowY))) {
        box = box.parentElement;
    }
    (box || document.scrollingElement).scrollBy(0, -100);
}"""
# the box of the nearest ancestor drawn with a border (a ``st.container(border=True)``)
_BORDERED_BOX = """(el) => {
    for (let box = el; box; box = box.parentElement) {
        const style = getComputedStyle(box);
        if (style.borderTopStyle !== "none" && parseFloat(style.borderTopWidth) > 0 && box.clientWidth > 300) {
            const r = box.getBoundingClientRect();
            return {x: r.x, y: r.y, width: r.width, height: r.height};
        }
    }
    return null;
}"""
# every image decoded and every chart drawn
_RENDERED = """() => [...document.images].every((im) => im.complete && im.naturalWidth > 0)
    && [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')].every((c) => c.querySelector("svg, canvas"))"""


class Tour:
    """One browser session through the app's pages, writing the cropped images it is asked for."""

    def __init__(self, page, base: str, out: Path, wanted: set[str], recipe: ModelRecipe) -> None:
        self.page, self.base, self.out, self.wanted, self.recipe = page, base, out, wanted, recipe
        self.where = "the home page"
        self.written: list[Path] = []

    # waiting ---------------------------------------------------------------------

    def _check_errors(self) -> None:
        for selector in ERROR_SELECTORS:
            found = self.page.query_selector_all(selector)
            if found:
                text = " ".join(el.inner_text().strip() for el in found)
                raise ScreenshotFailed(f"{self.where} shows an error: {text}")

    def _running(self) -> bool:
        return self.page.query_selector('[data-testid="stStatusWidget"]') is not None

    def _progress(self) -> str:
        parts = self.page.eval_on_selector_all(
            '[data-testid="stProgress"], [data-testid="stSpinner"]', "(els) => els.map((el) => el.innerText.trim()).filter(Boolean)"
        )
        return " · ".join(dict.fromkeys(parts))

    def wait_until(self, ready: Callable[[], bool], what: str, timeout_s: float = STAGE_TIMEOUT_S) -> None:
        """Poll until ``ready()`` holds and the script run has ended (no status widget for 2 s).

        Meanwhile: fail on an error the page shows, press Start when the heavy stages wait for it,
        and echo the page's progress bars on stderr every ``PROGRESS_EVERY_S`` seconds.
        """
        say(f"{self.where}: waiting for {what}…")
        started = time.monotonic()
        last_said, last_start, quiet_since = started, 0.0, None
        while True:
            self._check_errors()
            running = self._running()
            # while a run goes on, the previous run's Start stays on screen, greyed: press only the current one
            start = None if running else self.page.query_selector(".st-key-analysis_start button")
            if start is not None and start.is_visible() and time.monotonic() - last_start > 15:
                say(f"{self.where}: the heavy stages wait for Start (estimated over a minute): pressing it")
                start.click()
                last_start, quiet_since = time.monotonic(), None
            elif not running and ready():
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 2.0 and self.page.evaluate(_RENDERED):
                    break
            else:
                quiet_since = None
            now = time.monotonic()
            if now - started > timeout_s:
                raise ScreenshotFailed(f"{self.where} did not finish {what} within {timeout_s / 60:.0f} min.")
            if now - last_said > PROGRESS_EVERY_S:
                progress = self._progress()
                say(f"{self.where}: {progress or 'still waiting'} ({now - started:.0f} s)")
                last_said = now
            self.page.wait_for_timeout(500)
        self.page.wait_for_timeout(1000)  # the charts' last layout pass
        self._check_errors()
        say(f"{self.where}: ready after {time.monotonic() - started:.0f} s")

    def shows(self, text: str) -> Callable[[], bool]:
        return lambda: self.page.get_by_text(text).count() > 0

    # moving --------------------------------------------------------------------

    def open_home(self) -> None:
        self.where = "the home page"
        query = f"?head={self.recipe.head}" if self.recipe.head else ""  # a link's focus head, as a user shares it
        self.page.goto(f"{self.base}/{query}", timeout=120_000)
        self.wait_until(lambda: self.page.query_selector('[data-testid="stVegaLiteChart"]') is not None, "the image overview")

    def follow(self, path: str, title: str) -> None:
        """Follow the sidebar's link to a page, as a user does (a new URL would start a new session)."""
        self.where = f"the {title} page"
        links = self.page.locator('[data-testid="stSidebar"] a[data-testid="stPageLink-NavLink"]')
        links.filter(has_text=title).first.click()
        self.page.wait_for_url(re.compile(rf"{re.escape(self.base)}/{path}(\?.*)?$"), timeout=60_000)
        self.page.wait_for_timeout(1000)

    # cropping --------------------------------------------------------------------

    def _top(self, locator) -> float:
        locator.first.evaluate(_SCROLL_TO)
        self.page.wait_for_timeout(300)
        return locator.first.bounding_box()["y"]

    def _content_x(self) -> tuple[float, float]:
        box = self.page.locator('[data-testid="stMainBlockContainer"] > [data-testid="stVerticalBlock"]').first.bounding_box()
        return box["x"], box["width"]

    def clip(self, top, *, below=None, until=None, pad: int = 16) -> Image.Image:
        """The main area from ``top``'s top to ``below``'s top (exclusive) or to ``until``'s bottom."""
        y0 = self._top(top)
        if below is not None:
            y1 = below.first.bounding_box()["y"] - 4
        else:
            box = until.first.bounding_box() if not callable(until) else until()
            y1 = box["y"] + box["height"] + pad
        x, width = self._content_x()
        return self._shot({"x": x - pad, "y": y0 - pad, "width": width + 2 * pad, "height": y1 - y0 + pad})

    def _shot(self, clip: dict) -> Image.Image:
        self.page.evaluate("() => document.activeElement?.blur()")  # no focus ring on the widget used last
        return Image.open(io.BytesIO(self.page.screenshot(clip=clip))).convert("RGB")

    def save(self, name: str, image: Image.Image) -> None:
        path = self.out / f"{name}.png"
        path.write_bytes(compact_png(image))
        self.written.append(path)
        say(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")

    def heading(self, name: str):
        return self.page.get_by_role("heading", name=name)

    def block_with(self, text: str):
        """The row of columns that holds ``text``."""
        return self.page.locator('[data-testid="stHorizontalBlock"]').filter(has_text=text)

    # the pages ---------------------------------------------------------------------

    def head_importance(self) -> None:
        self.follow("Head_Importance", "Head importance")
        self.wait_until(self.shows("Heads are pruned cumulatively"), "the exact sweep and the pruning curve")
        if "head-importance" in self.wanted:
            self.save("head-importance", self.clip(self.heading("B1 · Every head"), below=self.page.get_by_role("heading", name="B2 ·")))

    def attention_strength(self) -> None:
        self.follow("Attention_Strength", "Attention strength")
        self.wait_until(self.shows("The sink of"), "the strength of every head")
        if "attention-strength" in self.wanted:
            paper = self.clip(self.page.locator('[data-testid="stRadio"]').first, below=self.heading("Beyond the paper"))
            sinks = self.clip(self.heading("Where attention goes"), until=self.block_with("Top-key share of every head").first)
            self.save("attention-strength", stack(paper, sinks))

    def attention_patterns(self) -> None:
        self.follow("Attention_Patterns", "Attention patterns")
        self.wait_until(self.shows("D5 ·"), "the autoencoder and the UMAP layout of the attention maps")
        if "attention-patterns" in self.wanted:
            self.save("attention-patterns", self.clip(self.heading("Pattern space"), below=self.heading("Focus head")))

    def explanations(self) -> None:
        self.follow("Explanations", "Explanations")
        self.wait_until(self.shows("Which map to trust"), "the relevance maps")
        if "explanations" not in self.wanted:
            return
        self.page.get_by_role("button", name="Score the maps").click()
        self.wait_until(self.shows("Area under each curve"), "the deletion and insertion curves")
        # the maps, then the curves that say which map to trust (without the controls between)
        maps = self.clip(self.heading("Where the model looked"), below=self.heading("Heads that carry the relevance"))
        trust = self.clip(self.heading("Which map to trust"), below=self.page.locator('[data-testid="stRadio"]').filter(has_text="Score on"))
        curves = self.page.locator('[data-testid="stVegaLiteChart"]').last
        self.save("explanations", stack(maps, trust, self.clip(curves, until=curves)))

    def case_study(self) -> None:
        self.follow("Case_Study", "Case study")
        self.wait_until(self.shows("Save to the library"), "the case study (every stage, then partial pruning of the top heads)")
        if "case-study" in self.wanted:
            first = self.page.get_by_role("heading", name=re.compile(r"^1\. "))
            self.save("case-study", self.clip(self.heading("Across layers"), until=lambda: first.first.evaluate(_BORDERED_BOX)))
        form = self.page.locator('[data-testid="stForm"]')
        form.get_by_label("Title").fill(self.recipe.case_title)
        form.get_by_role("button", name="Save to the library").click()
        self.wait_until(self.shows("the sidebar's link opens it"), "the case study to be saved to the library")

    def library(self, studies: int) -> None:
        self.follow("Library", "Library")
        self.wait_until(self.shows(f"The library holds {studies} studies"), f"the library's {studies} studies")
        if "library" in self.wanted:
            card = self.page.get_by_role("heading", level=4).first
            self.save("library", self.clip(self.page.get_by_role("heading", name="Library", exact=True), until=lambda: card.evaluate(_BORDERED_BOX)))

    def compare(self, side_b_title: str) -> None:
        self.follow("Compare", "Compare")
        self.wait_until(self.shows("Side B is"), "the two sides' pickers")
        side_b = self.page.locator('[data-testid="stRadio"]').filter(has_text="Side B is")
        side_b.get_by_text("a library study").click()
        self.wait_until(self.shows("Library study for side B"), "the library picker of side B")
        self.page.locator('[data-testid="stSelectbox"]').filter(has_text="Library study for side B").get_by_role("combobox").click()
        self.page.get_by_role("option").filter(has_text=side_b_title).first.click()
        self.wait_until(self.shows("What changed"), "the comparison of the two studies")
        if "compare" in self.wanted:
            self.save("compare", self.clip(self.heading("Side A"), below=self.heading("Per head")))

    def home(self) -> None:
        self.follow("", "Overview")
        self.where = "the home page"
        caption = self.page.get_by_text(re.compile(r"^(UMAP|PCA layout) of the"))
        self.wait_until(lambda: caption.count() > 0, "the UMAP layout of the overview")
        overview = self.block_with("Image overview").first
        if "overview" in self.wanted:
            self.save("overview", self.clip(overview, until=overview))
        if "app" in self.wanted:
            self.page.set_viewport_size({"width": HERO_WIDTH, "height": VIEWPORT["height"]})
            self.page.wait_for_timeout(1500)
            self.wait_until(lambda: True, "the narrower window's layout")
            self.page.locator('[data-testid="stMain"]').evaluate("(el) => el.scrollTo(0, 0)")
            self.page.wait_for_timeout(300)
            bottom = caption.first.bounding_box()
            height = max(760, bottom["y"] + bottom["height"] + 32)
            self.save("app", self._shot({"x": 0, "y": 0, "width": HERO_WIDTH, "height": height}))
            self.page.set_viewport_size(VIEWPORT)


def stack(*images: Image.Image) -> Image.Image:
    """Crops of one page put one under the other, on white."""
    width = max(im.width for im in images)
    out = Image.new("RGB", (width, sum(im.height for im in images)), "white")
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.height
    return out


def compact_png(image: Image.Image) -> bytes:
    """``image`` as a palette PNG of at most ``MAX_WIDTH`` pixels across and under ``MAX_BYTES``."""
    if image.width > MAX_WIDTH:
        image = image.resize((MAX_WIDTH, round(image.height * MAX_WIDTH / image.width)), Image.Resampling.LANCZOS)
    for colours in (256, 128, 64):
        buffer = io.BytesIO()
        image.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(buffer, "PNG", optimize=True)
        if buffer.tell() < MAX_BYTES:
            return buffer.getvalue()
    raise ScreenshotFailed(f"a {image.width}x{image.height} crop stays over {MAX_BYTES // 1024} KB even with 64 colours.")


# --- the run ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dinov2-s", help="the built-in model the app starts on (default %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the images (default docs/images)")
    parser.add_argument("--only", help=f"comma-separated images to write (default every one): {', '.join(sorted(IMAGES))}")
    parser.add_argument("--side-b", type=Path, help="the result bundle of the Compare page's side B (default: built once)")
    parser.add_argument("--port", type=int, help="the server's port (default: a free one)")
    args = parser.parse_args(argv)
    wanted = set(IMAGES) if not args.only else {name.strip().removesuffix(".png") for name in args.only.split(",") if name.strip()}
    unknown = wanted - set(IMAGES)
    if unknown or not wanted:
        parser.error(f"--only takes names among {', '.join(sorted(IMAGES))}, not {', '.join(sorted(unknown)) or 'nothing'}")
    args.wanted = wanted
    return args


def run(args: argparse.Namespace) -> list[Path]:
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        raise ScreenshotFailed(f"Playwright's Python package is missing ({err}): pip install -r requirements-dev.txt.") from err
    executable = chromium_path()
    recipe = RECIPES.get(args.model, ModelRecipe(head=None, case_title=f"{args.model} on its sample images"))
    wanted = args.wanted
    needs_side_b = bool(wanted & {"compare", "library"})
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="headscope-screenshots-") as temp:
        library = Path(temp) / "library"
        side_b_title = ""
        if needs_side_b:
            bundle, side_b_title = side_b_bundle(args.model, args.side_b)
            add_to_library(bundle, side_b_title, library)
        env = {
            **os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
            "HEADSCOPE_MODEL": args.model, "HEADSCOPE_LIBRARY": str(library),
        }
        log_path = Path(temp) / "streamlit.log"
        say(f"starting the app on {args.model}…")
        with started_server(args.port or free_port(), env, log_path) as base, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport=VIEWPORT)
                offsite: list[str] = []

                def only_the_server(route) -> None:
                    if route.request.url.startswith(base):
                        route.continue_()
                    else:
                        offsite.append(route.request.url)
                        route.abort()

                page.route("**/*", only_the_server)
                tour = Tour(page, base, args.out, wanted, recipe)
                try:
                    _take(tour, wanted, side_b_title)
                except (PlaywrightError, ScreenshotFailed) as err:
                    seen = Path(tempfile.gettempdir()) / "headscope-screenshots-failure.png"
                    with contextlib.suppress(PlaywrightError):
                        page.screenshot(path=str(seen))
                    if isinstance(err, ScreenshotFailed):
                        raise ScreenshotFailed(f"{err} The window then: {seen}") from err
                    raise ScreenshotFailed(
                        f"the browser failed on {tour.where}: {str(err).splitlines()[0]} The window then: {seen}"
                    ) from err
            finally:
                browser.close()
        say(f"off-site requests blocked: {len(offsite)}" + "".join(f"\n  {url}" for url in offsite))
        server_log = log_path.read_text(errors="replace")
        if "Traceback" in server_log:
            raise ScreenshotFailed(f"the server logged a traceback:\n{server_log[-3000:]}")
    return tour.written


def _take(tour: Tour, wanted: set[str], side_b_title: str) -> None:
    """The tour: the home page first (it starts UMAP's compilation), each wanted view, the home page last."""
    tour.open_home()
    if "head-importance" in wanted:
        tour.head_importance()
    if "attention-strength" in wanted:
        tour.attention_strength()
    if "attention-patterns" in wanted:
        tour.attention_patterns()
    if "explanations" in wanted:
        tour.explanations()
    if wanted & {"case-study", "library"}:
        tour.case_study()  # and saves it to the library
    if "library" in wanted:
        tour.library(studies=2)
    if "compare" in wanted:
        tour.compare(side_b_title)
    if wanted & {"app", "overview"}:
        tour.home()  # last: UMAP has had its time to compile, and the overview is laid out by it


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    try:
        written = run(args)
    except ScreenshotFailed as err:
        say(f"error: {err}")
        return 2
    print(f"{'image':<24} {'KB':>6} {'pixels':>11}")
    for path in written:
        with Image.open(path) as im:
            print(f"{path.name:<24} {path.stat().st_size / 1024:>6.0f} {f'{im.width}x{im.height}':>11}")
    say(f"{len(written)} images in {args.out} after {(time.monotonic() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
