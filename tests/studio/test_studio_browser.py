"""octrain studio in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``)
driving a real ``octrain ui`` on 127.0.0.1 through Selenium.

The lane: every page loads without an exception; a constitution is edited (a mistake shows its
line) and saved; a ``pirate_tiny`` run is launched, its progress and then its evaluation report
appear; a chat turn streams. A screenshot of each page goes to ``--screenshots=DIR`` or
``$STUDIO_SCREENSHOTS`` (default: the test's temporary directory); ``STUDIO_DOCS_SCREENSHOTS=1``
also copies the constitutions and runs shots to ``docs/`` for docs/studio.md.

    python -m pytest tests/test_studio_browser.py -m browser
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import patience

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[2]
# The quickest pirate_tiny run that still trains both stages and writes the evaluation report.
QUICK_RUN = "prompts.expansion_rounds=0 scale.prompts_per_trait=1 scale.reflections=8 scale.interactions=2"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(what: str, check: Callable[[], Any], timeout: float, every: float = 0.25) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + patience(timeout)
    while True:
        try:
            value = check()
        except StaleElementReferenceException:  # Streamlit redrew the element meanwhile: look again
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


@pytest.fixture(scope="module")
def screenshots(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``--screenshots=DIR`` (an option conftest.py adds), else ``$STUDIO_SCREENSHOTS``, else a temporary directory."""
    given = request.config.getoption("--screenshots", default=None) or os.environ.get("STUDIO_SCREENSHOTS")
    directory = Path(given) if given else tmp_path_factory.mktemp("studio-screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``octrain ui`` on a free port, in a working directory of its own, with an empty run root."""
    pytest.importorskip("streamlit")
    home = tmp_path_factory.mktemp("studio-home")
    root = home / "runs"
    port = _free_port()
    from octrain.cli import SUBCOMMANDS

    if "ui" in SUBCOMMANDS:
        command = [sys.executable, "-m", "octrain", "ui", "--port", str(port), "--run-root", str(root)]
        env = dict(os.environ)
    else:  # `octrain ui` not registered yet: the command it runs
        from octrain.cli.ui import streamlit_command
        from octrain.studio.state import RUN_ROOT_ENV

        command = streamlit_command("127.0.0.1", port)
        env = {**os.environ, RUN_ROOT_ENV: str(root)}
    log = open(home / "studio.log", "wb")  # noqa: SIM115 (closed below, after the server)
    server = subprocess.Popen(command, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert server.poll() is None, (home / "studio.log").read_text(errors="replace")[-3000:]
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    try:
        _wait("the studio's health check", healthy, 60)
        yield {"url": url, "home": home, "root": root, "log": home / "studio.log"}
    finally:
        from octrain.studio import jobs

        for run_dir in jobs.list_runs(root) if root.is_dir() else []:
            if jobs.status(run_dir).state == "running":
                jobs.stop(run_dir)
        server.terminate()
        try:
            server.wait(timeout=patience(20))
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1300"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


class Studio:
    """The browser on the studio: open pages, wait for Streamlit to settle, find what it drew."""

    def __init__(self, driver: Any, url: str, shots: Path) -> None:
        from selenium.webdriver.common.by import By

        self.driver, self.url, self.shots, self.by = driver, url, shots, By

    def open(self, path: str, title: str) -> None:
        from octrain.studio.views import PAGES

        # The default page lives at the app's root: its own path is "page not found".
        self.driver.get(f"{self.url}/{'' if path == PAGES[0].url_path else path}")
        _wait(f"the {title} page", lambda: title in [h.text for h in self.all("h1")], 60)
        self.settle()

    def all(self, selector: str) -> list[Any]:
        return self.driver.find_elements(self.by.CSS_SELECTOR, selector)

    def settle(self, timeout: float = 120) -> None:
        """Wait until the script run is over (Streamlit shows its running widget meanwhile)."""
        time.sleep(0.5)
        _wait("the page to finish running", lambda: not self.running(), timeout)
        time.sleep(0.3)

    def running(self) -> bool:
        # Streamlit marks the app's root with the script's state for its own end-to-end tests.
        states = [e.get_attribute("data-test-script-state") for e in self.all('[data-testid="stApp"]')]
        return not states or any(state in ("running", "initial", None) for state in states)

    def exceptions(self) -> list[str]:
        return [e.text for e in self.all('[data-testid="stException"]')]

    def alerts(self, kind: str) -> list[str]:
        # st.error / st.success / st.info draw an alert whose content names its kind; the text
        # starts with the icon's name (a Material Symbols ligature), hence the "in" checks.
        return [e.text for e in self.all(f'[data-testid="stAlertContent{kind}"]')]

    def button(self, label: str) -> Any:
        xpath = f"//button[.//p[normalize-space()='{label}']]"
        return _wait(f"a {label!r} button", lambda: self.driver.find_elements(self.by.XPATH, xpath), 30)[0]

    def click(self, element: Any) -> None:
        """Click as a user would, once the element is scrolled clear of Streamlit's fixed header."""
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        time.sleep(0.2)
        element.click()

    def shot(self, name: str) -> Path:
        path = self.shots / f"studio-{name}.png"
        self.driver.save_screenshot(str(path))
        return path


@pytest.fixture(scope="module")
def app(studio: dict[str, Any], browser: Any, screenshots: Path) -> Studio:
    return Studio(browser, studio["url"], screenshots)


def test_every_page_loads_without_an_exception(app: Studio) -> None:
    from octrain.studio.views import PAGES

    for page in PAGES:
        app.open(page.url_path, page.title)
        assert not app.exceptions(), (page.title, app.exceptions())
        app.shot(f"page-{page.url_path}")


def test_a_constitution_is_edited_a_mistake_shows_its_line_and_it_is_saved(app: Studio, studio: dict) -> None:
    from selenium.webdriver.common.keys import Keys

    app.open("constitutions", "Constitutions")
    card = app.driver.find_element(
        app.by.XPATH, "//strong[normalize-space()='pirate']/ancestor::div[.//button][1]//button"
    )
    app.click(card)
    app.settle()
    editor = _wait("the editor", lambda: app.all('textarea[aria-label="Studio YAML"]'), 30)[0]
    _wait("the pirate text", lambda: "buccaneer" in (editor.get_attribute("value") or ""), 30)
    _wait("the check", lambda: any("loads:" in s for s in app.alerts("Success")), 60)
    # A mistake on line 1: a key the schema does not have.
    editor.click()
    editor.send_keys(Keys.CONTROL, Keys.HOME)
    editor.send_keys("personality: bold\n")
    editor.send_keys(Keys.CONTROL, Keys.ENTER)
    app.settle()
    error = _wait("the loader's error", lambda: [e for e in app.alerts("Error") if "personality" in e], 60)[0]
    assert "my_pirate.yaml:1: personality: unknown key 'personality'" in error, error
    assert any(">    1 | personality: bold" in code.text for code in app.all("code")), "the line is not shown"
    app.shot("constitutions-error")
    # Fix it: delete the line again.
    editor = app.all('textarea[aria-label="Studio YAML"]')[0]
    editor.click()
    editor.send_keys(Keys.CONTROL, Keys.HOME)
    editor.send_keys(Keys.SHIFT, Keys.DOWN)
    editor.send_keys(Keys.DELETE)
    editor.send_keys(Keys.CONTROL, Keys.ENTER)
    app.settle()
    _wait("the fixed text to load", lambda: any("loads:" in s for s in app.alerts("Success")), 60)
    app.click(app.button("Save"))
    app.settle()
    target = studio["home"] / "constitutions" / "my_pirate.yaml"
    _wait("the saved message", lambda: any(f"saved {target}" in s for s in app.alerts("Success")), 30)
    assert target.is_file()
    shot = app.shot("constitutions")
    if os.environ.get("STUDIO_DOCS_SCREENSHOTS"):
        shutil.copy(shot, REPO / "docs" / "studio-constitutions.png")


def test_a_pirate_tiny_run_is_launched_and_its_progress_and_report_appear(app: Studio, studio: dict) -> None:
    app.open("train", "Train")
    extra = app.all('textarea[aria-label^="more overrides"]')[0]
    extra.click()
    extra.send_keys(QUICK_RUN)
    from selenium.webdriver.common.keys import Keys

    extra.send_keys(Keys.CONTROL, Keys.ENTER)
    app.settle()
    _wait("the config check", lambda: any("the config is valid" in s for s in app.alerts("Success")), 90)
    app.shot("train")
    app.click(app.button("Launch in the background"))
    app.settle()
    _wait("the launch", lambda: any("launched pirate_tiny" in s for s in app.alerts("Success")), 30)
    app.open("runs", "Runs")
    # Progress while it runs: the stage bar, refreshed in place by the page's fragment.
    _wait("the progress bar", lambda: any(" of 6 stages done" in p.text for p in app.all(".stProgress")), 300)
    app.shot("runs-running")

    def finished() -> bool:
        assert not app.exceptions(), app.exceptions()
        heads = [h.text for h in app.all("h3")]
        assert not any("pirate_tiny: failed" in head for head in heads), app.alerts("Error")
        return any("pirate_tiny: finished" in head for head in heads)

    _wait("the run to finish", finished, 900, every=1)
    app.settle()
    _wait("the loss curves", lambda: app.all('[data-testid="stVegaLiteChart"]'), 30)
    shot = app.shot("runs")
    if os.environ.get("STUDIO_DOCS_SCREENSHOTS"):
        shutil.copy(shot, REPO / "docs" / "studio-runs.png")
    app.open("evaluate", "Evaluate")
    _wait("the report", lambda: [h for h in app.all("h1") if h.text.startswith("Evaluation: ")], 30)
    _wait("its plots", lambda: app.all('[data-testid="stImage"] img, [data-testid="stFullScreenFrame"] img'), 30)
    assert not app.exceptions()
    app.shot("evaluate-report")


def test_a_chat_turn_streams(app: Studio) -> None:
    """Needs the run above: its sft checkpoint is the model."""
    from selenium.webdriver.common.keys import Keys

    app.open("chat", "Chat and compare")
    # A longer answer than the run's 32 tokens, so that its arrival in pieces can be seen.
    length = app.all('input[aria-label^="answer length in tokens"]')[0]
    length.send_keys("160", Keys.ENTER)
    app.settle()
    # The model loads in the background: the chat box is enabled once it is in memory.
    box = _wait(
        "the chat input, enabled",
        lambda: [box for box in app.all('[data-testid="stChatInputTextArea"]') if box.is_enabled()],
        120,
    )[0]
    box.send_keys("Ahoy! Who are you?")
    box.send_keys(Keys.ENTER)
    seen: list[int] = []

    def answered() -> bool:
        messages = app.all('[data-testid="stChatMessage"]')
        if len(messages) >= 2:
            seen.append(len(messages[1].text))
        return len(messages) >= 2 and bool(app.all('[data-testid="stFeedback"]'))  # the rating: the turn is over

    _wait("the answer, with its rating", answered, 180, every=0.05)
    app.settle()
    messages = app.all('[data-testid="stChatMessage"]')
    assert "Ahoy! Who are you?" in messages[0].text
    assert messages[1].text.strip(), "the answer is empty"
    partial = sorted({size for size in seen if 0 < size < max(seen)})
    assert partial, f"the answer appeared at once, not streamed (lengths seen: {sorted(set(seen))})"
    assert not app.exceptions()
    app.shot("chat")
