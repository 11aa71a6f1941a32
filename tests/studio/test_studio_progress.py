"""Progress in the studio: a running run's step bar with its time left, and the data preview's own bar.

The bars a run draws are tqdm's; they are read back from what tqdm really writes (to a buffer,
and from a real process writing a real run's console file), not from hand-typed lines.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("streamlit")

from streamlit.testing.v1 import AppTest
from tqdm import tqdm

from conftest import patience
from octrain.core.layout import STUDIO_CONSOLE_FILE, STUDIO_JOB_FILE
from octrain.studio.progress import Countdown, clock_seconds, duration_text, parse_bar
from octrain.studio.state import RUN_ROOT_ENV
from studio_pages import page


def progress_bars(at: AppTest) -> list[tuple[int, str]]:
    """Every ``st.progress`` on the page: (percent, text)."""
    return [(element.proto.value, element.proto.text) for element in at.get("progress")]


def last_drawing(buffer: io.StringIO) -> str:
    return buffer.getvalue().split("\r")[-1]


def test_parse_bar_reads_what_tqdm_writes() -> None:
    buffer = io.StringIO()
    bar = tqdm(total=20, desc="teacher answers", unit="conv", file=buffer, mininterval=0, miniters=1)
    first = parse_bar(last_drawing(buffer))
    assert first is not None and first.fraction == 0 and first.remaining is None  # tqdm's "<?": no estimate yet
    for _ in range(9):
        bar.update(1)
    bar.set_postfix_str("35 tok/s")
    state = parse_bar(last_drawing(buffer))
    bar.close()
    assert state is not None
    assert (state.desc, state.fraction, state.done, state.total) == ("teacher answers", 0.45, "9", "20")
    assert state.elapsed is not None and state.remaining is not None
    # Scaled counts (TRL's token bars) and a bar with no total (nothing to estimate).
    scaled = io.StringIO()
    big = tqdm(total=5000, file=scaled, mininterval=0, unit_scale=True)
    big.update(3000)
    assert parse_bar(last_drawing(scaled)).fraction == 0.6  # type: ignore[union-attr]
    big.close()
    open_ended = io.StringIO()
    endless = tqdm(file=open_ended, mininterval=0)
    endless.update(3)
    assert parse_bar(last_drawing(open_ended)) is None
    endless.close()
    assert parse_bar("loading the teacher (builtin:tiny-qwen3)...") is None


def test_clock_and_durations() -> None:
    assert clock_seconds("1:02:03") == 3723 and clock_seconds("02:03") == 123 and clock_seconds("?") is None
    assert duration_text(3723) == "1:02:03" and duration_text(59.6) == "1:00" and duration_text(None) == "-"


def test_countdown_estimates_from_the_mean_unit() -> None:
    countdown = Countdown(total=4, started=time.monotonic() - 10)
    assert countdown.remaining is None and "estimating" in countdown.label("x")
    countdown.advance()
    assert countdown.remaining == pytest.approx(30, abs=0.5)  # 10 s for one unit, three to go
    countdown.advance(10)
    assert countdown.done == 4 and countdown.fraction == 1 and countdown.remaining == 0


@pytest.fixture
def live_run(trained_tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A run directory whose launch record points at a live process drawing a real tqdm bar into its console."""
    from octrain.studio import jobs

    root = tmp_path / "runs"
    run_dir = root / "pirate_tiny"
    run_dir.mkdir(parents=True)
    shutil.copy(trained_tiny_root / "pirate_tiny" / "config.yaml", run_dir / "config.yaml")
    script = (
        "import time, sys\n"
        "from tqdm import tqdm\n"
        "bar = tqdm(total=40, desc='teacher answers', unit='conv', mininterval=0, miniters=1)\n"
        "for _ in range(10):\n"
        "    time.sleep(0.05); bar.update(1)\n"
        "time.sleep(120)\n"
    )
    with open(run_dir / STUDIO_CONSOLE_FILE, "wb") as console:
        # "octrain" in its command line: the studio checks a recorded pid still runs an octrain command.
        process = subprocess.Popen(
            [sys.executable, "-c", script, "octrain"], stdout=console, stderr=subprocess.STDOUT, start_new_session=True
        )
    job = jobs.Job(
        run_dir=str(run_dir),
        pid=process.pid,
        command=[sys.executable, "-m", "octrain", "+recipe=pirate_tiny"],
        recipe="pirate_tiny",
        overrides=[],
        stages=["prompts", "pairs", "dpo", "introspect", "sft"],
        started=time.time(),
        cwd=str(tmp_path),
    )
    (run_dir / STUDIO_JOB_FILE).write_text(json.dumps(jobs.asdict(job)), encoding="utf-8")
    monkeypatch.setenv(RUN_ROOT_ENV, str(root))
    try:
        deadline = time.monotonic() + 30
        while "10/40" not in (jobs.console_tail(run_dir, 1) or [""])[-1]:
            assert process.poll() is None and time.monotonic() < deadline, jobs.console_tail(run_dir)
            time.sleep(0.05)
        yield run_dir
    finally:
        process.kill()
        process.wait()


def test_runs_page_shows_the_running_steps_bar_and_time_left(live_run: Path) -> None:
    at = page("runs", timeout=patience(60)).run()
    assert not at.exception
    assert any(": running" in header for header in (str(h.value) for h in at.subheader))
    bars = progress_bars(at)
    # The run's stages (none done yet), then the step now running: 10 of 40 answers, with tqdm's estimate.
    assert bars[0][0] == 0 and "0 of 5 stages done" in bars[0][1] and "now: prompts" in bars[0][1]
    assert bars[1][0] == 25, bars
    assert bars[1][1].startswith("teacher answers: 10/40 · about ") and bars[1][1].endswith(" left"), bars


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(RUN_ROOT_ENV, str(tmp_path / "runs"))
    return tmp_path


def test_data_preview_applies_the_length_filter_and_counts_down(workdir: Path) -> None:
    """With the other filters off and pairs.max_length=8 tokens, every pair is too long for the student's
    template: the preview must count tokens as the pairs stage does (it used to skip this filter)."""
    at = page("data_preview", timeout=patience(240)).run()
    at.number_input(key="pv_count").set_value(2)
    at.text_input(key="pv_extra").set_value(
        "pairs.sampling.max_new_tokens=12 pairs.max_length=8 pairs.filters.empty=false "
        "pairs.filters.unfinished=false pairs.filters.final_punctuation=false"
    )
    at.button[0].click().run()
    assert not at.exception and not at.error, [str(e.value) for e in at.error]
    rows = at.session_state["preview_results"]
    assert [row.verdict for row in rows] == ["too-long", "too-long"]
    percent, text = progress_bars(at)[0]
    # 1 (prompts) + 2 x (load + 2 answers) + 1 (the tokenizer) = 8 units, all done.
    assert percent == 100 and "(8/8)" in text, text
