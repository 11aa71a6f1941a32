"""octrain studio's pages, driven by Streamlit's own test harness (``streamlit.testing.v1.AppTest``).

Each test runs one page's ``render()`` in-process, as the server would, and checks what it draws
against the library underneath: the loader's error and line for a bad constitution, a saved file,
the composed config and the CLI's own error line, a finished run's stages and curves, the eval
report with its plots, and an answer from the tiny model.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("streamlit")

from streamlit.testing.v1 import AppTest

from conftest import patience
from octrain.studio.state import RUN_ROOT_ENV
from studio_pages import page, texts

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory of its own (so ``./constitutions`` is the test's) and an empty run root."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)
    monkeypatch.setenv(RUN_ROOT_ENV, str(tmp_path / "runs"))
    return home


@pytest.fixture
def trained_root(trained_tiny_root: Path, monkeypatch: pytest.MonkeyPatch, workdir: Path) -> Path:
    """The session's finished tiny run, read-only: the studio reads it where it is."""
    monkeypatch.setenv(RUN_ROOT_ENV, str(trained_tiny_root))
    return trained_tiny_root


@pytest.fixture
def evaluated_root(trained_tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workdir: Path) -> Path:
    """Two runs with an eval report each (copies of the finished run's config, a report written here)."""
    root = tmp_path / "eval-runs"
    source = trained_tiny_root / "pirate_tiny"
    for name, rate in (("first", "0.50"), ("second", "0.75")):
        run = root / name
        (run / "eval").mkdir(parents=True)
        (run / "dpo").mkdir()
        shutil.copy(source / "config.yaml", run / "config.yaml")
        shutil.copy(source / "dpo" / "training.png", run / "dpo" / "training.png")
        (run / "eval" / "report.md").write_text(
            f"# Evaluation: {name}\n\n| model | in character |\n| --- | --- |\n| trained | {rate} |\n\n"
            "![dpo training](../dpo/training.png)\n\nThe end.\n",
            encoding="utf-8",
        )
        (run / "eval" / "results.json").write_text(json.dumps({"persona": "pirate", "rate": rate}), encoding="utf-8")
    monkeypatch.setenv(RUN_ROOT_ENV, str(root))
    return root


# --- constitutions --------------------------------------------------------------------------------


def _open_pirate(at: AppTest) -> AppTest:
    cards = texts(at.markdown)
    buttons = [b for b in at.button if b.label == "Edit a copy"]
    names = [text.split("**")[1] for text in cards if text.startswith("**") and "·" in text]
    return buttons[names.index("pirate")].click().run()


def test_constitutions_gallery_lists_the_shipped_personas(workdir: Path) -> None:
    at = page("constitutions").run()
    assert not at.exception
    shown = " ".join(texts(at.markdown))
    for persona in ("pirate", "sarcasm", "humor", "goodness"):
        assert f"**{persona}**" in shown


def test_constitutions_editor_shows_the_loaders_error_with_its_line(workdir: Path) -> None:
    at = _open_pirate(page("constitutions").run())
    assert at.text_input(key="ct_name").value == "my_pirate"
    text = at.text_area(key="ct_text").value
    assert texts(at.success) == ["loads: 13 traits, 60 seed questions"] or texts(at.success)[0].startswith("loads:")
    assert texts(at.metric)  # the quality score
    assert "1: I am a free-roaming buccaneer" in texts(at.code)[0]  # the traits as the teacher sees them
    broken = text.replace("  identity: |", "  identiti: |")
    line = broken.splitlines().index("  identiti: |") + 1
    at.text_area(key="ct_text").set_value(broken).run()
    errors = texts(at.error)
    assert errors == [
        f"my_pirate.yaml:{line}: persona.identiti: unknown key 'identiti' (expected one of identity, voice)"
    ]
    assert any(
        f">  {line:>3} |   identiti: |" in code or f"> {line:>4} |   identiti: |" in code for code in texts(at.code)
    )
    # Nothing that does not load is saved.
    at.button(key="ct_save").click().run()
    assert not (workdir / "constitutions").exists()


def test_constitutions_save_writes_the_file_and_refuses_to_overwrite(workdir: Path) -> None:
    from octrain.constitution import load_constitution

    at = _open_pirate(page("constitutions").run())
    at.button(key="ct_save").click().run()
    target = workdir / "constitutions" / "my_pirate.yaml"
    assert f"saved {target}" in texts(at.success)
    saved = load_constitution(target)
    assert saved.name == "my_pirate"  # meta.name follows the file's name, as `constitution new` does
    before = target.read_text(encoding="utf-8")
    at.button(key="ct_save").click().run()
    assert any("already exists" in error for error in texts(at.error))
    assert target.read_text(encoding="utf-8") == before
    at.checkbox(key="ct_overwrite").check().run()
    at.button(key="ct_save").click().run()
    assert f"saved {target}" in texts(at.success)


# --- train and runs -----------------------------------------------------------------------------


def test_train_shows_the_composed_config(workdir: Path, tmp_path: Path) -> None:
    at = page("train").run()
    assert not at.exception
    assert at.selectbox(key="train_recipe").value == "pirate_tiny"
    assert any(s.startswith("the config is valid; the run goes to") for s in texts(at.success))
    composed = next(code for code in texts(at.code) if code.startswith("seed:") or "\nconstitution:" in code)
    assert "constitution: pirate" in composed
    assert f"run_root: {tmp_path / 'runs'}" in composed
    at.selectbox(key="train_scale").set_value("micro").run()
    assert "scale=micro" in texts(at.code)[0]
    assert at.button(key="train_go").disabled is False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sampler.bach_size=3", "octrain: error: sampler.bach_size: Key 'bach_size' not in 'SamplerConfig'"),
        (
            "sampler.backend=gpu",
            "octrain: error: sampler.backend: Invalid value 'gpu', expected one of [hf, vllm, tinker, fake]",
        ),
    ],
)
def test_train_refuses_a_bad_override_with_the_clis_message(workdir: Path, override: str, message: str) -> None:
    from conftest import run_cli

    cli = run_cli("+recipe=pirate_tiny", override)
    assert cli.returncode == 2 and cli.stderr.strip().splitlines()[-1] == message
    at = page("train").run()
    at.text_area(key="train_extra").set_value(override).run()
    assert texts(at.error) == [message]
    assert at.button(key="train_go").disabled is True


def test_train_refuses_what_preflight_refuses(workdir: Path) -> None:
    at = page("train").run()
    at.text_area(key="train_extra").set_value("eval.classifier.contrast_personas=[pirate]").run()
    [error] = texts(at.error)
    assert error.startswith("octrain: error: eval.classifier.contrast_personas: ['pirate'] must name other personas")


def test_runs_page_lists_a_finished_run(trained_root: Path) -> None:
    at = page("runs").run()
    assert not at.exception
    overview = at.dataframe[0].value
    assert list(overview["run"]) == ["pirate_tiny"] and list(overview["state"]) == ["finished"]
    assert list(overview["stages"]) == ["5/5"]
    assert any(h.startswith(":material/check_circle: pirate_tiny: finished") for h in texts(at.subheader))
    stages = at.dataframe[1].value
    assert list(stages["stage"]) == ["prompts", "pairs", "dpo", "introspect", "sft"]
    assert set(stages["state"]) == {"done"}
    assert len(at.get("vega_lite_chart")) == 2  # dpo and sft loss curves from metrics.jsonl
    assert any("run " in code and "pirate_tiny" in code for code in texts(at.code))  # the log tail


def test_runs_page_launches_stops_and_resumes_a_background_run(workdir: Path, tmp_path: Path) -> None:
    """A launch is a process of its own; stop sends SIGTERM to its group; resume runs it again."""
    from octrain.studio import jobs

    root = tmp_path / "runs"
    at = page("train").run()
    at.text_area(key="train_extra").set_value("sampler=fake stages=[prompts]").run()
    at.button(key="train_go").click().run()
    assert any("launched pirate_tiny" in s for s in texts(at.success)), texts(at.error)
    run_dir = root / "pirate_tiny"
    job = jobs.read_job(run_dir)
    assert job is not None and job.command[:3] == [sys.executable, "-m", "octrain"]
    at = page("runs").run()
    assert not at.exception
    stop = [b for b in at.button if b.label == "Stop"]
    if stop:  # still running: stop it, and see it stopped
        stop[0].click().run()
    deadline = __import__("time").monotonic() + 120
    while jobs.status(run_dir).state == "running":
        assert __import__("time").monotonic() < deadline
        __import__("time").sleep(0.2)
    at = page("runs").run()
    resume = [b for b in at.button if b.label in ("Resume", "Run again (finished stages are skipped)")]
    assert resume and not resume[0].disabled
    resume[0].click().run()
    while jobs.status(run_dir).state == "running":
        assert __import__("time").monotonic() < deadline
        __import__("time").sleep(0.2)
    assert jobs.status(run_dir).state == "finished", jobs.console_tail(run_dir)


# --- evaluate, chat, deploy ----------------------------------------------------------------------


def test_evaluate_shows_a_report_with_its_plot_and_two_side_by_side(evaluated_root: Path) -> None:
    at = page("evaluate").run()
    assert not at.exception
    assert at.selectbox(key="ev_run").options == ["second", "first"] or set(at.selectbox(key="ev_run").options) == {
        "first",
        "second",
    }
    shown = " ".join(texts(at.markdown))
    assert "# Evaluation:" in shown and "| trained |" in shown and "The end." in shown
    assert len(at.get("image")) == 1
    first = at.selectbox(key="ev_run").value
    other = next(name for name in ("first", "second") if name != first)
    at.selectbox(key="ev_other").set_value(other).run()
    shown = " ".join(texts(at.markdown))
    assert "# Evaluation: first" in shown and "# Evaluation: second" in shown
    assert len(at.get("image")) == 2


def wait_until_loaded(at: AppTest, seconds: float = 120) -> AppTest:
    """Run the page again until its model has loaded in the background (the chat box is enabled)."""
    import time

    deadline = time.monotonic() + seconds
    while at.chat_input(key="chat_input").proto.disabled:
        assert time.monotonic() < deadline, "the model did not load"
        time.sleep(0.2)
        at.run()
    return at


def test_chat_loads_the_model_without_blocking_the_page(trained_root: Path) -> None:
    """With the model lock held elsewhere (another tab answering), the page still draws at once: a
    loading notice, the chat box disabled, every setting live; once the lock is free the model loads."""
    from octrain.studio.state import model_lock

    lock = model_lock()
    with lock:
        at = page("chat", timeout=30).run()  # would time out if the page waited for the model
        assert not at.exception
        assert any(info.value.startswith("loading pirate_tiny/sft") for info in at.info), texts(at.info)
        assert at.chat_input(key="chat_input").proto.disabled
        at.number_input(key="chat_seed").set_value(7).run()  # a setting changes: a new session, still loading
        assert not at.exception and at.chat_input(key="chat_input").proto.disabled
    wait_until_loaded(at)
    assert not any(info.value.startswith("loading") for info in at.info)
    at.chat_input(key="chat_input").set_value("Ahoy?").run()
    assert not at.exception and not at.error, texts(at.error)
    assert [message.name for message in at.chat_message] == ["user", "assistant"]


def test_chat_answers_with_the_tiny_model_and_exports_the_session(trained_root: Path) -> None:
    at = wait_until_loaded(page("chat", timeout=patience(180)).run())
    assert not at.exception
    assert at.selectbox(key="chat_model").value == "pirate_tiny/sft"
    at.chat_input(key="chat_input").set_value("Ahoy, who are you?").run()
    assert not at.exception, at.exception
    assert not at.error, texts(at.error)
    roles = [message.name for message in at.chat_message]
    assert roles == ["user", "assistant"]
    assert at.chat_message[0].markdown[0].value == "Ahoy, who are you?"
    session = at.session_state["chat_log"]
    assert len(session) == 1 and session[0]["model"] == "pirate_tiny/sft"
    assert session[0]["messages"][-1] == {"role": "assistant", "content": session[0]["answer"]}
    at.text_input(key="note_0").set_value("a fine answer").run()
    at.feedback(key="rate_0").set_value(3).run()
    from octrain.studio.views.chat import export_lines

    state = at.session_state
    # The AppTest session state has no .get(): read it as the page reads st.session_state.get.
    lines = export_lines(session, lambda key: state[key] if key in state else None)  # noqa: SIM401
    [line] = lines.splitlines()
    row = json.loads(line)
    assert row["note"] == "a fine answer" and row["rating"] == 4 and row["answer"] == session[0]["answer"]
    assert at.get("download_button")  # the export button is there, with that text


def test_compare_puts_two_models_side_by_side(trained_root: Path) -> None:
    at = page("chat", timeout=patience(300)).run()
    assert at.multiselect(key="cmp_models").value == ["pirate_tiny/sft", "pirate_tiny/sft (base)"]
    at.text_area(key="cmp_prompt").set_value("Tell me about the sea.").run()
    at.button(key="cmp_go").click().run()
    assert not at.exception and not at.error, texts(at.error)
    log = at.session_state["chat_log"]
    assert [entry["model"] for entry in log] == ["pirate_tiny/sft", "pirate_tiny/sft (base)"]
    assert all(entry["prompt"] == "Tell me about the sea." and entry["seed"] == 0 for entry in log)
    assert "`pirate_tiny/sft`" in texts(at.markdown) and "`pirate_tiny/sft (base)`" in texts(at.markdown)


def test_chat_thinking_toggle_reaches_the_model_and_the_export(trained_root: Path) -> None:
    """The sidebar's thinking choice is pick_model's: a new session whose model config thinks, said in
    the caption and kept with the answer; "(the run's)" is the run's own (off, for the tiny run)."""
    at = page("chat", timeout=patience(180)).run()
    session = at.session_state["chat_session"]
    assert session.thinking is None and session.model.model_config().enable_thinking is False
    assert any("thinking off" in caption.value for caption in at.caption), texts(at.caption)
    at.selectbox(key="chat_thinking").set_value("on").run()
    session = at.session_state["chat_session"]
    assert session.thinking is True and session.model.model_config().enable_thinking is True
    assert any("thinking on" in caption.value for caption in at.caption), texts(at.caption)
    wait_until_loaded(at).chat_input(key="chat_input").set_value("Ahoy?").run()
    assert not at.exception and not at.error, texts(at.error)
    [entry] = at.session_state["chat_log"]
    assert entry["enable_thinking"] is True

    at.selectbox(key="cmp_thinking").set_value("off").run()
    at.text_area(key="cmp_prompt").set_value("Tell me about the sea.").run()
    at.button(key="cmp_go").click().run()
    assert not at.exception and not at.error, texts(at.error)
    compared = [entry for entry in at.session_state["chat_log"] if entry["kind"] == "compare"]
    assert [entry["enable_thinking"] for entry in compared] == [False, False]


def _answers(texts: list[str]) -> None:
    from octrain.studio.views.chat import show_answer

    for text in texts:
        show_answer(text)


def test_an_answers_thought_is_folded_away_above_it() -> None:
    """The tiny tokenizer drops <think> when it decodes, so the display is checked on written texts."""
    at = AppTest.from_function(
        _answers,
        args=(
            ["<think>The user hails me.</think>Ahoy there!", "<think>still musing", "<think></think>Arr.", "Plain."],
        ),
    ).run()
    assert not at.exception
    folds = at.expander  # the empty thought gets no fold; an unclosed one does
    assert [fold.label for fold in folds] == ["thinking", "thinking"]
    assert [fold.text[0].value for fold in folds] == ["The user hails me.", "still musing"]
    assert texts(at.markdown) == ["Ahoy there!", "Arr.", "Plain."]  # no thought in what the model said
    assert [caption.value for caption in at.caption] == [
        "the model was still thinking when it reached the answer length: no answer"
    ]


def test_deploy_shows_the_modal_dry_run(trained_root: Path) -> None:
    pytest.importorskip("modal")
    at = page("deploy", timeout=patience(120)).run()
    assert not at.exception
    at.button(key="dp_modal_dry").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert at.json


def test_data_preview_shows_teacher_and_student_with_the_filters_verdict(workdir: Path) -> None:
    at = page("data_preview", timeout=patience(240)).run()
    at.number_input(key="pv_count").set_value(2)
    at.text_input(key="pv_extra").set_value("pairs.sampling.max_new_tokens=12")
    at.button[0].click().run()  # the form's submit button
    assert not at.exception and not at.error, texts(at.error)
    rows = at.session_state["preview_results"]
    assert len(rows) == 2 and all(row.teacher is not None and row.student is not None for row in rows)
    # pirate_tiny keeps unfinished answers: a verdict is "kept" or names the filter that dropped the pair.
    assert all(row.verdict == "kept" or row.verdict for row in rows)
    assert texts(at.metric)[0].endswith("of 2")


def test_wizard_walks_from_a_shipped_persona_to_a_saved_constitution(workdir: Path) -> None:
    at = page("wizard").run()
    assert "step 1 of 6" in at.get("progress")[0].proto.text
    at.selectbox(key="wz_template").set_value("pirate").run()
    at.button(key="wz_use").click().run()
    assert "step 2 of 6" in at.get("progress")[0].proto.text
    assert at.text_input(key="ct_name").value == "my_pirate"
    at.button(key="wz_save").click().run()
    assert (workdir / "constitutions" / "my_pirate.yaml").is_file()
    assert at.button(key="wz_next_1").disabled is False
    at.button(key="wz_next_1").click().run()
    assert "step 3 of 6" in at.get("progress")[0].proto.text
    at.button(key="wz_next_2").click().run()
    at.button(key="wz_next_3").click().run()  # the CPU: pirate_tiny
    assert "step 5 of 6" in at.get("progress")[0].proto.text
    assert any("ready: pirate_tiny with my_pirate" in s for s in texts(at.success)), texts(at.error)


def test_wizard_follows_the_launched_run_and_ends_in_a_chat_with_it(trained_root: Path) -> None:
    at = page("wizard", timeout=patience(180))
    at.session_state["wz_step"] = 4  # Launch, with the run launched: the session's finished tiny run
    at.session_state["wz_run"] = str(trained_root / "pirate_tiny")
    at.session_state["wz_persona"] = "pirate"
    at.run()
    assert not at.exception
    bars = [element.proto.text for element in at.get("progress")]
    assert any(text.startswith("5 of 5 stages done") for text in bars), bars
    assert at.button(key="wz_next_4").disabled is False  # finished: on to the chat
    at.button(key="wz_next_4").click().run()
    assert "step 6 of 6" in at.get("progress")[0].proto.text
    assert any("Talk to **pirate_tiny/sft**" in text for text in texts(at.markdown)), texts(at.markdown)
    wait_until_loaded(at)
    at.chat_input(key="chat_input").set_value("Ahoy?").run()
    assert not at.exception and not at.error, texts(at.error)
    assert [message.name for message in at.chat_message] == ["user", "assistant"]
    assert at.session_state["chat_log"][0]["model"] == "pirate_tiny/sft"


def test_wizard_saves_a_new_persona_outside_the_checkout_where_runs_find_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started from the checkout, whose constitutions/ is tracked, the wizard saves a new persona in the
    user's constitution directory (OCTRAIN_DATA_DIR); the library, the command line and a run find it by name."""
    from conftest import run_cli
    from octrain.constitution.catalog import resolve_constitution_name
    from octrain.core.user_dirs import DATA_DIR_ENV

    data = tmp_path / "data"
    monkeypatch.setenv(DATA_DIR_ENV, str(data))
    monkeypatch.setenv(RUN_ROOT_ENV, str(tmp_path / "runs"))
    monkeypatch.chdir(REPO)
    name = f"wizard_{tmp_path.name}"  # a name no shipped persona has
    saved = data / "constitutions" / f"{name}.yaml"
    tracked = REPO / "constitutions" / f"{name}.yaml"
    try:
        at = page("wizard").run()
        at.selectbox(key="wz_template").set_value("pirate").run()
        at.text_input(key="wz_name").set_value(name).run()
        at.button(key="wz_use").click().run()
        at.button(key="wz_save").click().run()
        assert not at.exception and not at.error, texts(at.error)
        assert any(str(saved) in text for text in texts(at.success)), texts(at.success)
        assert saved.is_file() and not tracked.exists()
        assert resolve_constitution_name(name).source == str(saved)
        shown = run_cli("constitution", "show", name)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith(f"# {name} ({saved}): ")
        quick = ["sampler=fake", "prompts.expansion_rounds=0", "stages=[prompts]", f"run_root={tmp_path / 'runs'}"]
        run = run_cli("+recipe=pirate_tiny", f"constitution={name}", *quick)
        assert run.returncode == 0, run.stderr
        assert (tmp_path / "runs" / "pirate_tiny" / "constitution.yaml").read_bytes() == saved.read_bytes()
    finally:
        tracked.unlink(missing_ok=True)  # had the wizard saved into the checkout, leave it as it was


# pirate_tiny's CLI, its stage markers written as usual, but held for good once the eval stage has
# begun (its started.json written): a run that is surely still evaluating while the test looks.
HELD_IN_EVAL = """
import sys, time
import octrain.run.stage_step as step

original = step.write_started

def held(stage_dir, fingerprint):
    original(stage_dir, fingerprint)
    if stage_dir.name == "eval":
        time.sleep(600)

step.write_started = held
from octrain.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_wizard_offers_the_chat_once_sft_is_done_while_the_run_still_evaluates(
    trained_tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workdir: Path
) -> None:
    import time

    from conftest import TINY_TRAINED_RUN, run_cli
    from octrain.core.layout import STARTED_FILE
    from octrain.studio import jobs
    from octrain.studio.views.wizard import final_checkpoint

    # The session's trained run (prompts to sft done and registered), copied: this launch adds eval.
    root = tmp_path / "runs"
    shutil.copytree(trained_tiny_root / "pirate_tiny", root / "pirate_tiny")
    assert run_cli("checkpoints", "rebuild", "--run-root", str(root)).returncode == 0
    monkeypatch.setenv(RUN_ROOT_ENV, str(root))
    run_dir = root / "pirate_tiny"
    overrides = [arg for arg in TINY_TRAINED_RUN[1:] if not arg.startswith("stages=")]
    overrides.append("stages=[prompts,pairs,dpo,introspect,sft,eval]")
    monkeypatch.setattr(
        jobs,
        "run_command",
        lambda recipe, given, where: [
            sys.executable,
            "-c",
            HELD_IN_EVAL,
            f"+recipe={recipe}",
            *given,
            f"run_root={where}",
        ],
    )
    stages = ["prompts", "pairs", "dpo", "introspect", "sft", "eval"]
    job = jobs.launch("pirate_tiny", overrides, run_dir=run_dir, run_root=root, stages=stages)
    try:
        # Just launched: its sft is an earlier launch's, which this one may yet train again.
        assert final_checkpoint(run_dir, root) is None
        deadline = time.monotonic() + patience(180)
        while not (run_dir / "eval" / STARTED_FILE).is_file():
            assert jobs.status(run_dir).state == "running", jobs.console_tail(run_dir)
            assert time.monotonic() < deadline, jobs.console_tail(run_dir)
            time.sleep(0.2)
        at = page("wizard", timeout=patience(180))
        at.session_state["wz_step"] = 4  # Launch, with this run launched
        at.session_state["wz_run"] = str(run_dir)
        at.session_state["wz_persona"] = "pirate"
        at.run()
        assert not at.exception
        assert jobs.status(run_dir).state == "running"
        assert at.button(key="wz_next_4").disabled is False  # sft done: on to the chat, eval or not
        assert any("pirate_tiny/sft" in text and "evaluation" in text for text in texts(at.success))
        at.button(key="wz_next_4").click().run()
        assert "step 6 of 6" in at.get("progress")[0].proto.text
        [notice] = [text for text in texts(at.info) if "in the background" in text]
        assert "eval" in notice and "Evaluate" in notice
        assert any("Talk to **pirate_tiny/sft**" in text for text in texts(at.markdown)), texts(at.markdown)
        wait_until_loaded(at)
        at.chat_input(key="chat_input").set_value("Ahoy?").run()
        assert not at.exception and not at.error, texts(at.error)
        assert [message.name for message in at.chat_message] == ["user", "assistant"]
        assert jobs.status(run_dir).state == "running"  # the run goes on
    finally:
        if jobs.status(run_dir).state == "running":
            jobs.stop(run_dir)
        jobs._CHILDREN[job.pid].wait(timeout=patience(60))


def test_deploy_plans_the_server(trained_root: Path) -> None:
    at = page("deploy", timeout=patience(120)).run()
    at.selectbox(key="dp_serve_backend").set_value("transformers").run()
    at.button(key="dp_serve_go").click().run()
    assert not at.exception
    if at.error:  # transformers serve needs the [serve] extra
        assert "pip install" in texts(at.error)[0]
        return
    assert any("serve" in code for code in texts(at.code))


def test_every_page_loads_with_no_runs(workdir: Path) -> None:
    from octrain.studio.views import PAGES

    for info in PAGES:
        at = page(info.module).run()
        assert not at.exception, (info.module, at.exception)


def test_ui_command_line(tmp_path: Path) -> None:
    from conftest import run_cli

    result = run_cli("ui", "--print-command", "--port", "8765", "--run-root", str(tmp_path))
    if result.returncode == 2 and "unknown command 'ui'" in result.stderr:
        pytest.skip("octrain ui is not registered in octrain.cli yet")
    assert result.returncode == 0, result.stderr
    assert f"{RUN_ROOT_ENV}={tmp_path}" in result.stdout
    assert "streamlit run" in result.stdout and "--server.address 127.0.0.1 --server.port 8765" in result.stdout
    assert "--browser.gatherUsageStats false" in result.stdout


def test_ui_parser_prints_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``octrain ui``'s own parser and handler, whether or not octrain.cli lists it yet."""
    import argparse

    from octrain.cli import ui

    parser = argparse.ArgumentParser(prog="octrain")
    ui.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ui", "--print-command", "--run-root", str(tmp_path), "--port", "8777"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{RUN_ROOT_ENV}={tmp_path} ") and "--server.port 8777" in out


def test_ui_streamlit_command() -> None:
    from octrain.cli.ui import streamlit_command
    from octrain.studio import APP_PATH

    command = streamlit_command("127.0.0.1", 8600)
    assert command[1:5] == ["-m", "streamlit", "run", str(APP_PATH)]
    assert APP_PATH.is_file()
    assert command[command.index("--server.headless") + 1] == "true"


@pytest.fixture(autouse=True)
def _no_leftover_runs() -> Iterator[None]:
    """A test that launched a run leaves no process behind."""
    yield
    from octrain.studio import jobs

    for pid, child in list(jobs._CHILDREN.items()):
        if child.poll() is None:
            child.kill()
            child.wait()
        jobs._CHILDREN.pop(pid, None)
