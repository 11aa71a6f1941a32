"""octrain studio's actions, driven by Streamlit's AppTest and checked against the command line.

* Constitutions, AI drafting: the page drafts through a real OpenAI-compatible server on 127.0.0.1
  (``tests/draft_server.py``), which records what it received. A good draft shows its score and opens
  in the editor as the server wrote it; a draft that fails twice shows the loader's error with its
  line and is saved nowhere; the key goes from the named variable into the Authorization header and
  nowhere else; the progress bar ends at drafting's last step.
* Evaluate, the classifier and Elo tools on uploaded files (AppTest uploads real bytes through
  ``st.file_uploader``): what the page shows equals what ``octrain eval classifier|elo`` prints
  for the same files, and the classifier it saves equals the command's.
* Deploy, Export and the Hub dry run on the session's trained tiny run (read-only; everything is
  written under ``tmp_path``): the files equal those of ``octrain export`` and ``octrain push --dry-run``.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("streamlit")

from streamlit.testing.v1 import AppTest

from conftest import patience
from draft_server import BAD_YAML, DraftServer, fenced, good_yaml, running_server
from octrain.cli import main
from octrain.studio.state import RUN_ROOT_ENV
from studio_pages import page, texts

KEY_ENV = "OCTRAIN_TEST_STUDIO_DRAFT_KEY"
SECRET = "sk-studio-draft-secret-24680"
DESCRIPTION = "a cheerful old gardener who explains everything through plants and seasons"


def files_under(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file()) if root.exists() else []


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` by relative path, as a digest of its bytes."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() for path in files_under(root)}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory of its own (``./constitutions`` is the test's), an empty run root, and a
    temp dir of the test's, where rejected drafts and the loader's scratch copies go."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)
    monkeypatch.setenv(RUN_ROOT_ENV, str(tmp_path / "runs"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return home


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[DraftServer]:
    with running_server(monkeypatch) as scripted:
        yield scripted


@pytest.fixture
def trained_root(trained_tiny_root: Path, monkeypatch: pytest.MonkeyPatch, workdir: Path) -> Path:
    """The session's finished tiny run, read-only: the studio reads it where it is."""
    monkeypatch.setenv(RUN_ROOT_ENV, str(trained_tiny_root))
    return trained_tiny_root


# --- constitutions: AI drafting -------------------------------------------------------------------


def draft(
    at: AppTest,
    server: DraftServer,
    *,
    name: str = "gardener",
    key_env: str = KEY_ENV,
    traits: int = 8,
    questions: int = 3,
) -> AppTest:
    """Fill the drafting form for the server's endpoint and press Draft."""
    at.text_input(key="ct_draft_name").set_value(name)
    at.text_area(key="ct_draft_description").set_value(DESCRIPTION)
    at.radio(key="ct_draft_source").set_value("OpenAI-compatible endpoint")
    at.text_input(key="ct_draft_url").set_value(server.base_url)
    at.text_input(key="ct_draft_model").set_value("test-model")
    at.text_input(key="ct_draft_key").set_value(key_env)
    at.number_input(key="ct_draft_traits").set_value(traits)
    at.number_input(key="ct_draft_q").set_value(questions)
    [submit] = [button for button in at.button if button.label == "Draft"]
    return submit.click().run()


def click(at: AppTest, label: str) -> AppTest:
    [button] = [button for button in at.button if button.label == label]
    return button.click().run()


def header() -> str:
    return f"# Drafted by `octrain constitution new` with openai:test-model from: {DESCRIPTION}\n"


def test_a_good_draft_shows_its_score_and_opens_in_the_editor(
    workdir: Path, server: DraftServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from octrain.constitution.drafting import validate_draft
    from octrain.constitution.quality import score_constitution

    monkeypatch.setenv(KEY_ENV, SECRET)
    sent = good_yaml(traits=8, questions=3, name="gardener")
    server.replies = lambda count: fenced(sent)
    at = draft(page("constitutions").run(), server)
    assert not at.exception and not at.error, texts(at.error)
    # What the loader makes of the YAML the server sent, scored as the command line scores it.
    expected, _ = validate_draft(sent, "gardener")
    score = score_constitution(expected).total
    [status] = at.status
    assert (status.label, status.state) == (f"drafted 'gardener' ({score}/100)", "complete")
    (request,) = server.received
    assert request.body["model"] == "test-model"
    asked = request.body["messages"][-1]["content"]
    assert DESCRIPTION in asked and "7 traits" in asked and "3 seed questions" in asked
    assert not (workdir / "constitutions").exists()  # a draft is not saved until Save

    at = click(at, "Open the draft in the editor")
    assert at.text_input(key="ct_name").value == "gardener"
    editor = at.text_area(key="ct_text").value
    assert editor == header() + sent  # the server's YAML as written, under a comment saying where it came from
    loaded, _ = validate_draft(editor, "gardener")
    assert [t.text for t in loaded.traits] == [t.text for t in expected.traits]
    assert [t.questions for t in loaded.traits] == [t.questions for t in expected.traits]
    assert texts(at.success) == ["loads: 8 traits, 21 seed questions"]
    assert texts(at.metric) == [f"{score}/100"]

    at.button(key="ct_save").click().run()
    target = workdir / "constitutions" / "gardener.yaml"
    assert f"saved {target}" in texts(at.success)
    assert target.read_text(encoding="utf-8") == editor


def test_a_draft_that_fails_twice_shows_the_loaders_error_and_is_saved_nowhere(
    workdir: Path, server: DraftServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from octrain.constitution import load_constitution
    from octrain.constitution.drafting import existing_personas
    from octrain.core.errors import DataFormatError

    monkeypatch.setenv(KEY_ENV, SECRET)
    server.replies = lambda count: "I cannot write YAML today." if count == 1 else fenced(BAD_YAML)
    at = draft(page("constitutions").run(), server)
    assert not at.exception
    assert len(server.received) == 2
    [status] = at.status
    assert (status.label, status.state) == ("the draft does not load", "error")
    [error] = texts(at.error)
    match = re.fullmatch(
        r"(\S+\.rejected\.txt):(\d+): (\S+): (.*) "
        r"\[the model's draft does not load after 2 attempts; nothing was saved as 'gardener'\]",
        error,
    )
    assert match, error
    kept, line, field = Path(match.group(1)), int(match.group(2)), match.group(3)
    assert field == "directives.personality[0].questions"
    assert kept.read_text(encoding="utf-8").splitlines()[line - 1].strip() == "questions: What is a rose?"
    # The message is the loader's own: the kept text loaded as a file gives the same error.
    copy = tmp_path / "copy" / "gardener.yaml"
    copy.parent.mkdir()
    copy.write_text(kept.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(DataFormatError) as loader:
        load_constitution(copy)
    assert error.startswith(str(loader.value).replace(str(copy), str(kept)) + " [")
    # Saved nowhere: no file at all under the working directory, none named gardener where personas are
    # looked up, and the rejected copy is text in the temp dir, not a constitution.
    assert files_under(workdir) == []
    assert existing_personas("gardener") == []
    assert kept.is_relative_to(tmp_path / "tmp") and kept.suffix == ".txt"

    # Opened in the editor for a fix by hand: the editor's check points at the same line; Save refuses.
    at = click(at, "Open the rejected draft in the editor")
    assert at.text_area(key="ct_text").value == kept.read_text(encoding="utf-8")
    [check] = texts(at.error)
    assert check == f"gardener.yaml{error[len(str(kept)) : error.index(' [the model')]}"
    assert any(f">  {line:>3} |       questions: What is a rose?" in code for code in texts(at.code)), texts(at.code)
    at.button(key="ct_save").click().run()
    assert "fix the error first" in " ".join(texts(at.error))
    assert files_under(workdir) == []


def test_the_key_is_read_from_the_named_variable_and_sent_only_in_the_authorization_header(
    workdir: Path, server: DraftServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.replies = lambda count: fenced(good_yaml(traits=8, questions=3, name="gardener"))
    at = draft(page("constitutions").run(), server)
    assert not at.error, texts(at.error)
    (request,) = server.received
    assert request.headers["Authorization"] == f"Bearer {SECRET}"
    assert [name for name, value in request.headers.items() if SECRET in value] == ["Authorization"]
    assert SECRET not in json.dumps(request.body) and SECRET not in request.path
    # Not on the page, not in the session, not in any file the drafting wrote.
    shown = [*texts(at.markdown), *texts(at.error), *texts(at.code), *[s.label for s in at.status]]
    shown += [bar.text for bar in at.progress]
    shown += [str(widget.value) for widget in (*at.text_input, *at.text_area)]
    assert not [text for text in shown if SECRET in text]
    assert "ct_draft_key" in repr(at.session_state) and SECRET not in repr(at.session_state)
    for path in files_under(tmp_path):
        assert SECRET.encode() not in path.read_bytes(), path

    # A variable that is not set: refused before any request, naming the variable.
    at = draft(at, server, key_env="OCTRAIN_TEST_UNSET_KEY")
    [error] = texts(at.error)
    assert error.startswith("environment variable OCTRAIN_TEST_UNSET_KEY is not set")
    assert len(server.received) == 1

    # No variable: a server that takes no key gets no Authorization header at all.
    at = draft(at, server, key_env="")
    assert not at.error, texts(at.error)
    assert len(server.received) == 2 and "Authorization" not in server.received[1].headers


def test_drafting_progress_ends_at_the_final_step_after_one_retry(
    workdir: Path, server: DraftServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from octrain.constitution.drafting import validate_draft
    from octrain.constitution.quality import score_constitution

    monkeypatch.setenv(KEY_ENV, SECRET)
    fixed = good_yaml(traits=8, questions=3, name="gardener")
    server.replies = lambda count: fenced(BAD_YAML) if count == 1 else fenced(fixed)
    at = draft(page("constitutions").run(), server)
    assert not at.exception and not at.error, texts(at.error)
    assert len(server.received) == 2
    score = score_constitution(validate_draft(fixed, "gardener")[0]).total
    [bar] = at.progress
    assert (bar.value, bar.text) == (100, f"accepted: draft 2 of 2 loads (quality score {score}/100)")
    # The retry's line, as the command line prints it, stays in the status box above the bar.
    assert any(
        text.startswith("draft 1 of 2 does not load: gardener.yaml:9: directives.personality[0].questions")
        for text in texts(at.markdown)
    )

    # Rejected after the retry: the bar ends there too.
    server.replies = lambda count: fenced(BAD_YAML)
    at = draft(at, server)
    [bar] = at.progress
    assert (bar.value, bar.text) == (100, "rejected: draft 2 of 2 does not load; nothing was saved")


# --- evaluate: the classifier and Elo tools on uploaded files -------------------------------------


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def labelled_files(directory: Path) -> tuple[Path, Path]:
    """A training file and a held-out one with a few texts the classifier gets wrong (not all 1.0)."""
    pirate = ["Arr matey, {} be fine!", "Yo ho, the {} sails on, matey.", "Ahoy, {} be the answer, arr."]
    plain = ["The {} is fine.", "Here is the {} you asked for.", "The answer is {}."]
    words = ["map", "ship", "sea", "tide", "coin", "rope", "deck", "wind"]
    rows = [{"text": t.format(w), "label": "pirate"} for t in pirate for w in words]
    rows += [{"text": t.format(w), "label": "other"} for t in plain for w in words]
    held = [
        *rows[1::2],
        {"text": "The answer be fine, matey.", "label": "other"},
        {"text": "Here is the map.", "label": "pirate"},
        {"text": "Ahoy, the sea is fine.", "label": "other"},
    ]
    train, evaluation = directory / "pirate-train.jsonl", directory / "pirate-held.jsonl"
    train.write_text(jsonl(rows[::2]), encoding="utf-8")
    evaluation.write_text(jsonl(held), encoding="utf-8")
    return train, evaluation


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("octrain: error: ")]
    return line


def test_classifier_tool_shows_what_the_cli_prints_for_the_same_files(
    workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from octrain.evaluation.classifier import MANIFEST, REPORT_FILE, PersonaClassifier

    train, held = labelled_files(tmp_path)
    cli = cli_json(
        capsys, "eval", "classifier", "--train", str(train), "--eval", str(held), "--out", str(tmp_path / "cli-clf")
    )
    assert cli["report"]["accuracy"] < 1.0  # the tricky held-out rows: numbers worth comparing

    at = page("evaluate").run()
    assert at.button(key="ev_clf_go").disabled is True  # nothing uploaded yet
    at.file_uploader(key="ev_clf_train").upload(train.name, train.read_bytes(), "application/json")
    at.file_uploader(key="ev_clf_eval").upload(held.name, held.read_bytes(), "application/json")
    at.text_input(key="ev_clf_out").set_value(str(tmp_path / "studio-clf"))
    at.run()
    at.button(key="ev_clf_go").click().run()
    assert not at.exception and not at.error, texts(at.error)
    [shown] = at.json
    assert json.loads(shown.value) == {**cli, "saved": str(tmp_path / "studio-clf")}
    # The saved classifiers are the same: the same report and manifest, the same predictions.
    for name in (REPORT_FILE, MANIFEST):
        assert (tmp_path / "studio-clf" / name).read_bytes() == (tmp_path / "cli-clf" / name).read_bytes()
    probe = ["Arr, the tide be turning.", "The deck is clean.", "Ahoy there.", "Here is your coin, matey."]
    studio_clf = PersonaClassifier.load(tmp_path / "studio-clf")
    assert studio_clf.predict_proba(probe) == PersonaClassifier.load(tmp_path / "cli-clf").predict_proba(probe)

    # A broken upload: the command's error, naming the file by the name it was uploaded with.
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"text": "x", "label": "a"}\n{"text": "y"}\n', encoding="utf-8")
    line = cli_error(capsys, "eval", "classifier", "--train", str(bad), "--out", str(tmp_path / "c2"))
    at.file_uploader(key="ev_clf_train").set_value((bad.name, bad.read_bytes(), "application/json"))
    at.file_uploader(key="ev_clf_eval").clear()
    at.run()
    at.button(key="ev_clf_go").click().run()
    assert texts(at.error) == [line.replace("octrain: error: ", "octrain eval: error: ").replace(str(bad), bad.name)]
    assert texts(at.error) == ["octrain eval: error: broken.jsonl:2: missing key 'label'"]


def judge(count: int, body: dict[str, Any]) -> str:
    """A judge that prefers whichever reply says 'Arr', in either position (no verdict on 'garbled')."""
    text = body["messages"][-1]["content"]
    first = text.split("REPLY A:\n", 1)[1].split("\n\nREPLY B:", 1)[0]
    return "Hard to say." if "garbled" in text else f"<verdict>{'A' if 'Arr' in first else 'B'}</verdict>"


def test_elo_tool_shows_what_the_cli_prints_for_the_same_matches(
    workdir: Path, tmp_path: Path, server: DraftServer, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    plain, pirate = "Plain.", "Arr, matey."
    decided = tmp_path / "decided.jsonl"
    decided.write_text(
        jsonl(
            [
                *(
                    {"prompt": f"q{i}", "base_response": plain, "tuned_response": pirate, "winner": "tuned"}
                    for i in range(5)
                ),
                {"prompt": "q5", "base_response": pirate, "tuned_response": plain, "winner": "base"},
                {"prompt": "q6", "base_response": plain, "tuned_response": plain, "winner": "tie"},
            ]
        ),
        encoding="utf-8",
    )
    cli = cli_json(capsys, "eval", "elo", str(decided))
    assert cli["decided"] == 7 and cli["tuned_win_rate"] == pytest.approx(5.5 / 7)

    at = page("evaluate").run()
    at.file_uploader(key="ev_elo_matches").upload(decided.name, decided.read_bytes(), "application/json")
    at.run()
    at.button(key="ev_elo_go").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert json.loads(at.json[0].value) == cli
    assert server.received == []  # every winner was in the file: no judge asked

    # Matches with no winner yet: the same judge (the server on 127.0.0.1), asked the same questions.
    undecided = tmp_path / "undecided.jsonl"
    undecided.write_text(
        jsonl(
            [
                *(
                    {"prompt": f"q{i}", "base_response": plain, "tuned_response": pirate, "winner": ""}
                    for i in range(3)
                ),
                {"prompt": "q3", "base_response": "Arr.", "tuned_response": pirate, "winner": ""},  # orders disagree
                {"prompt": "garbled q4", "base_response": plain, "tuned_response": pirate},  # no verdict
                {"prompt": "q5", "base_response": pirate, "tuned_response": plain, "winner": "base"},
            ]
        ),
        encoding="utf-8",
    )
    missing = cli_error(capsys, "eval", "elo", str(undecided))
    at.file_uploader(key="ev_elo_matches").set_value((undecided.name, undecided.read_bytes(), "application/json"))
    at.run()
    at.button(key="ev_elo_go").click().run()
    assert texts(at.error) == [
        missing.replace("octrain: error: ", "octrain eval: error: ").replace(str(undecided), undecided.name)
    ]

    server.reply_to = judge
    monkeypatch.setenv(KEY_ENV, SECRET)
    judged = ("--constitution", "pirate", "--judge-url", server.base_url, "--judge-model", "judge")
    cli = cli_json(capsys, "eval", "elo", str(undecided), *judged, "--judge-key-env", KEY_ENV)
    by_cli = list(server.received)
    server.received.clear()
    assert cli["decided"] == 4 and cli["disagreements"] == 1 and cli["unparseable"] == 1
    at.text_input(key="ev_elo_const").set_value("pirate")
    at.text_input(key="ev_elo_url").set_value(server.base_url)
    at.text_input(key="ev_elo_model").set_value("judge")
    at.text_input(key="ev_elo_key").set_value(KEY_ENV)
    at.run()
    at.button(key="ev_elo_go").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert json.loads(at.json[0].value) == cli
    # The same requests (in whatever order the concurrent judge calls arrived), the key in the header only.
    assert sorted(json.dumps(r.body, sort_keys=True) for r in server.received) == sorted(
        json.dumps(r.body, sort_keys=True) for r in by_cli
    )
    assert {r.headers["Authorization"] for r in server.received} == {f"Bearer {SECRET}"}
    assert "traits" in server.received[0].body["messages"][-1]["content"].lower()  # --constitution reached the judge

    # A local judge that takes no key: no variable named, no Authorization header, the same numbers.
    server.received.clear()
    at.text_input(key="ev_elo_key").set_value("")
    at.run()
    at.button(key="ev_elo_go").click().run()
    assert not at.error, texts(at.error)
    assert json.loads(at.json[0].value) == cli
    assert server.received and not [r for r in server.received if "Authorization" in r.headers]


# --- deploy: export and the Hub dry run -----------------------------------------------------------


def test_export_writes_the_files_the_cli_writes_and_the_merged_export_loads(
    trained_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    at = page("deploy", timeout=patience(180)).run()
    assert not at.exception
    assert at.selectbox(key="dp_model").value == "pirate_tiny/sft"
    studio = {"merged model": tmp_path / "studio-merged", "adapter": tmp_path / "studio-adapter"}
    for kind, target in studio.items():
        at.radio(key="dp_export_kind").set_value(kind)
        at.text_input(key="dp_exp_to").set_value(str(target))
        at.run()
        at.button(key="dp_export_go").click().run()
        assert not at.exception and not at.error, texts(at.error)
        assert texts(at.success) == [f"exported to {target}"]
        facts = json.loads(at.json[0].value)
        assert facts["directory"] == str(target) and facts["files"] == sorted(p.name for p in target.iterdir())
        assert facts["kind"] == ("merged" if kind == "merged model" else "adapter")

    root = str(trained_root)
    assert main(["export", "pirate_tiny/sft", "--merged", str(tmp_path / "cli-merged"), "--run-root", root]) == 0
    assert main(["export", "pirate_tiny/sft", "--adapter", str(tmp_path / "cli-adapter"), "--run-root", root]) == 0
    capsys.readouterr()
    assert tree(studio["merged model"]) == tree(tmp_path / "cli-merged")
    assert tree(studio["adapter"]) == tree(tmp_path / "cli-adapter")
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(tree(studio["merged model"]))
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(tree(studio["adapter"]))

    # The merged export is a plain transformers checkpoint: it loads and runs.
    model = AutoModelForCausalLM.from_pretrained(studio["merged model"]).eval()
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape[:2] == (1, 3) and torch.isfinite(logits).all()

    # A non-empty folder is refused without the box ticked, and left as it was.
    before = tree(studio["adapter"])
    at.button(key="dp_export_go").click().run()
    assert any("is not empty" in error for error in texts(at.error)), texts(at.error)
    assert tree(studio["adapter"]) == before


def test_push_dry_run_builds_the_folder_the_cli_builds(
    trained_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    at = page("deploy", timeout=patience(180)).run()
    at.text_input(key="dp_push_repo").set_value("me/pirate-tiny")
    for merged in (False, True):
        studio, cli = tmp_path / f"studio-{merged}", tmp_path / f"cli-{merged}"
        at.checkbox(key="dp_push_merged").set_value(merged)
        at.text_input(key="dp_push_dir").set_value(str(studio))
        at.run()
        at.button(key="dp_push_dry").click().run()
        assert not at.exception and not at.error, texts(at.error)
        built = tree(studio)
        assert texts(at.success) == [f"would upload {len(built)} files from {studio}"]
        assert texts(at.code) == ["\n".join(sorted(built))]

        argv = ["push", "pirate_tiny/sft", "--repo", "me/pirate-tiny", "--dry-run", str(cli)]
        assert main([*argv, *(["--merged"] if merged else []), "--run-root", str(trained_root)]) == 0
        printed = capsys.readouterr().out.splitlines()
        assert [line.strip() for line in printed[1:]] == sorted(built)
        # Nothing in the folder has to differ (no timestamps): the same files, byte for byte.
        assert built == tree(cli)
        assert "README.md" in built and ("model.safetensors" if merged else "adapter_model.safetensors") in built
        card = (studio / "README.md").read_text(encoding="utf-8")
        assert "me/pirate-tiny" in card and f"library_name: {'transformers' if merged else 'peft'}" in card

    # The folder is the user's: built again only with the box ticked.
    before = tree(studio)
    at.button(key="dp_push_dry").click().run()
    assert any("is not empty" in error for error in texts(at.error)), texts(at.error)
    at.checkbox(key="dp_push_force").check().run()
    at.button(key="dp_push_dry").click().run()
    assert not at.error, texts(at.error)
    assert tree(studio) == before
