"""``octrain constitution new``: a constitution drafted by a model behind a real HTTP server.

The server (``tests/draft_server.py``) is a stdlib ``http.server`` on 127.0.0.1 speaking the OpenAI
chat-completions API; each test scripts its replies and reads back what it received (headers and JSON
bodies). The command runs through :func:`octrain.cli.main` in a temporary working directory, so
``./constitutions`` (the first directory ``octrain constitution list`` reads) is the test's own, and
the shipped ones stay untouched.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import patience
from draft_server import BAD_YAML, DraftServer, fenced, good_yaml, running_server
from octrain.cli import main
from octrain.constitution import load_constitution
from octrain.constitution.draft_messages import extract_yaml, with_name
from octrain.core.errors import DataFormatError

KEY_ENV = "OCTRAIN_TEST_DRAFT_KEY"
SECRET = "sk-draft-secret-9876543210"
DESCRIPTION = "a cheerful old gardener who explains everything through plants and seasons"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[DraftServer]:
    with running_server(monkeypatch) as scripted:
        yield scripted


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory (its ./constitutions is the user directory) and a scratch temp dir."""
    home = tmp_path / "work"
    home.mkdir()
    monkeypatch.chdir(home)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # Rejected drafts and the loader's scratch copies go to the system temp dir; keep them in the test's.
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv(KEY_ENV, SECRET)
    return home


def new(server: DraftServer, name: str = "gardener", *extra: str) -> list[str]:
    return [
        "constitution",
        "new",
        name,
        "--describe",
        DESCRIPTION,
        "--base-url",
        server.base_url,
        "--model",
        "test-model",
        "--api-key-env",
        KEY_ENV,
        *extra,
    ]


def user_dir(workdir: Path) -> Path:
    return workdir / "constitutions"


def every_file_under(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


def test_good_draft_is_validated_saved_and_listed(
    server: DraftServer, workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(new(server)) == 0
    out, err = capsys.readouterr()
    saved = user_dir(workdir) / "gardener.yaml"
    assert f"saved {saved}: 10 traits, 45 seed questions (draft 1 of 2)" in out
    assert re.search(r"^gardener: \d+/100$", out, re.MULTILINE)  # the quality score, with its checks
    assert "seed questions" in out and "first person" in out

    constitution = load_constitution(saved)
    assert constitution.name == "gardener"  # the name asked for, not the model's display name
    assert len(constitution.traits) == 10 and constitution.question_count == 45
    assert constitution.traits[1].questions[0] == "What should I know about roses, question 0-0?"
    # Nothing else was left in the user directory (no temporaries, no rejected copy).
    assert [p.name for p in user_dir(workdir).iterdir()] == ["gardener.yaml"]

    # The request: the chat-completions route, the named model, the description, the key from KEY_ENV.
    (request,) = server.received
    assert request.path == "/v1/chat/completions"
    assert request.body["model"] == "test-model"
    assert request.headers["Authorization"] == f"Bearer {SECRET}"
    user_message = request.body["messages"][-1]
    assert user_message["role"] == "user" and DESCRIPTION in user_message["content"]
    assert "gardener" in user_message["content"] and "9 traits" in user_message["content"]
    assert "persona:" in request.body["messages"][0]["content"]  # the schema went in the system prompt
    # The key is in no request body, no output and no file written anywhere under the test's dirs.
    assert SECRET not in json.dumps(request.body) and SECRET not in out + err
    for path in every_file_under(tmp_path):
        assert SECRET.encode() not in path.read_bytes(), path

    assert main(["constitution", "list"]) == 0
    listing = capsys.readouterr().out
    row = next(line for line in listing.splitlines() if line.startswith("gardener "))
    assert row.split()[:4] == ["gardener", "yaml", "10", "45"] and str(user_dir(workdir)) in row
    assert main(["constitution", "show", "gardener"]) == 0
    assert "1: I am an old gardener" in capsys.readouterr().out


def test_a_draft_that_does_not_load_is_reported_and_not_saved(
    server: DraftServer, workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.replies = lambda count: fenced(BAD_YAML)
    assert main([*new(server), "--retries", "0"]) == 2
    err = capsys.readouterr().err
    assert len(server.received) == 1
    assert not user_dir(workdir).exists() or not list(user_dir(workdir).iterdir())

    # One line: the loader's FILE:LINE: FIELD: message, pointing at the kept draft.
    (line,) = [line for line in err.splitlines() if line.startswith("octrain: error: ")]
    match = re.match(r"octrain: error: (\S+\.rejected\.txt):(\d+): (\S+): (.*) \[the model's draft", line)
    assert match, line
    kept, number, field = Path(match.group(1)), int(match.group(2)), match.group(3)
    assert kept.name == "gardener.rejected.txt" and kept.is_relative_to(tmp_path / "tmp")
    assert field == "directives.personality[0].questions"
    assert kept.read_text().splitlines()[number - 1].strip() == "questions: What is a rose?"
    assert "nothing was saved as 'gardener'" in line
    # The message is the loader's own: the same text loaded as a file gives the same error.
    copy = tmp_path / "copy" / "gardener.yaml"
    copy.parent.mkdir()
    copy.write_text(kept.read_text())
    with pytest.raises(DataFormatError) as loader:
        load_constitution(copy)
    assert str(loader.value).replace(str(copy), str(kept)) in line

    assert main(["constitution", "list"]) == 0
    assert "gardener" not in capsys.readouterr().out


def test_a_retry_sends_the_loader_error_and_saves_the_fixed_draft(
    server: DraftServer, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.replies = lambda count: fenced(BAD_YAML) if count == 1 else good_yaml(traits=8, questions=3)
    assert main([*new(server), "--traits", "8", "--questions", "3", "--retries", "1"]) == 0
    out, err = capsys.readouterr()
    assert "draft 1 of 2 does not load: gardener.yaml:" in err
    assert "(draft 2 of 2)" in out

    first, second = server.received
    asked = first.body["messages"][-1]["content"]
    assert "7 traits" in asked and "3 seed questions" in asked
    *_, draft, feedback = second.body["messages"]
    assert draft["role"] == "assistant" and "questions: What is a rose?" in draft["content"]
    assert feedback["role"] == "user"
    assert "gardener.yaml:9: directives.personality[0].questions: expected a list of questions" in feedback["content"]
    constitution = load_constitution(user_dir(workdir) / "gardener.yaml")
    assert len(constitution.traits) == 8 and constitution.question_count == 21


def test_a_draft_that_fails_twice_is_not_saved(
    server: DraftServer, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.replies = lambda count: "I cannot write YAML today." if count == 1 else fenced(BAD_YAML)
    assert main(new(server)) == 2
    err = capsys.readouterr().err
    assert len(server.received) == 2
    assert "draft 1 of 2 does not load" in err and "after 2 attempts" in err
    assert not (user_dir(workdir) / "gardener.yaml").exists()


def test_an_existing_name_is_refused_without_force_and_replaced_with_it(
    server: DraftServer, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = user_dir(workdir) / "gardener.yaml"
    existing.parent.mkdir()
    existing.write_text("I am the first gardener, written by hand.\nI water everything at dawn.\n")
    before = existing.read_text()

    assert main(new(server)) == 2
    err = capsys.readouterr().err
    assert f"a constitution named 'gardener' already exists: {existing}" in err and "--force" in err
    assert server.received == []  # refused before the model was asked
    assert existing.read_text() == before

    assert main([*new(server), "--force"]) == 0
    assert f"replaced {existing}" in capsys.readouterr().out
    assert load_constitution(existing).question_count == 45

    # A shipped persona's name is taken too; the refusal names the shipped file.
    assert main(new(server, "pirate")) == 2
    assert f"already exists: {REPO / 'constitutions' / 'pirate.yaml'}" in capsys.readouterr().err
    assert len(server.received) == 1


def test_out_and_print(server: DraftServer, workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "elsewhere" / "gardener.yaml"
    assert main([*new(server), "--out", str(target)]) == 0
    assert f"saved {target}" in capsys.readouterr().out
    assert load_constitution(target).name == "gardener"
    assert main([*new(server), "--out", str(target)]) == 2  # an existing --out file is refused too
    assert f"already exists: {target}" in capsys.readouterr().err

    assert main([*new(server, "sketch"), "--print"]) == 0
    out, err = capsys.readouterr()
    assert "validated, not saved" in err and "sketch: " in err
    printed = tmp_path / "printed.yaml"
    printed.write_text(out)
    assert load_constitution(printed).name == "sketch"  # stdout is the YAML alone
    assert not (user_dir(workdir) / "sketch.yaml").exists()


def test_the_key_comes_only_from_the_named_variable(
    server: DraftServer, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(KEY_ENV)
    assert main(new(server)) == 2
    assert f"environment variable {KEY_ENV} is not set" in capsys.readouterr().err
    assert server.received == []

    # --api-key-env "": a server that takes no key, and no Authorization header at all.
    args = new(server)
    args[args.index(KEY_ENV)] = ""
    assert main(args) == 0
    capsys.readouterr()
    assert "Authorization" not in server.received[0].headers


def test_progress_reports_every_step_in_order(server: DraftServer, workdir: Path) -> None:
    """The structured progress a front end draws a bar from: each step, when it happens, how far along."""
    from octrain.constitution.drafting import DraftProgress, DraftRejected, draft_constitution, openai_sampler

    server.replies = lambda count: fenced(BAD_YAML) if count == 1 else good_yaml(traits=8, questions=3)
    seen: list[tuple[DraftProgress, int]] = []  # each step with the number of requests the server had by then
    sampler = openai_sampler(server.base_url, "test-model", api_key_env=KEY_ENV)
    draft = draft_constitution(
        sampler,
        "gardener",
        DESCRIPTION,
        traits=8,
        questions=3,
        progress=lambda p: seen.append((p, len(server.received))),
    )
    assert [(p.step, p.attempt, p.attempts, requests) for p, requests in seen] == [
        ("asking", 1, 2, 0),
        ("validating", 1, 2, 1),
        ("retry", 1, 2, 1),
        ("asking", 2, 2, 1),
        ("validating", 2, 2, 2),
        ("accepted", 2, 2, 2),
    ]
    steps = [p for p, _ in seen]
    assert [p.fraction for p in steps] == [0.0, 0.25, 0.5, 0.5, 0.75, 1.0]
    assert [p.done for p in steps] == [False] * 5 + [True]
    assert steps[2].error is not None and steps[2].error.startswith(
        "gardener.yaml:9: directives.personality[0].questions: expected a list of questions"
    )
    assert steps[-1].score == draft.score.total and draft.attempts == 2
    assert [p.describe() for p in steps] == [
        "asking the model (draft 1 of 2)",
        "validating draft 1 of 2 with octrain's loader",
        f"draft 1 of 2 does not load: {steps[2].error}; retry 1 of 1",
        "retry 1 of 1: asking the model again with the loader's error (draft 2 of 2)",
        "validating draft 2 of 2 with octrain's loader",
        f"accepted: draft 2 of 2 loads (quality score {draft.score.total}/100)",
    ]

    # A draft that never loads ends at "rejected", carrying the error and the kept copy DraftRejected names.
    server.replies = lambda count: fenced(BAD_YAML)
    steps = []
    with pytest.raises(DraftRejected) as rejected:
        draft_constitution(sampler, "gardener", DESCRIPTION, retries=0, progress=steps.append)
    assert [p.step for p in steps] == ["asking", "validating", "rejected"]
    assert steps[-1].error == str(rejected.value) and steps[-1].rejected_path == rejected.value.rejected_path
    assert steps[-1].describe() == "rejected: draft 1 of 1 does not load; nothing was saved"
    sampler.close()


def test_extracting_the_yaml_from_replies() -> None:
    body = "meta:\n  name: x\n"
    assert extract_yaml(fenced(body)) == body
    assert extract_yaml(f"```\n{body}```") == body
    assert extract_yaml(f"<think>\n```yaml\nnot: this\n```\n</think>\n```yml\n{body}```") == body
    assert extract_yaml(f"  {body}  ") == body.strip() + "\n"
    assert extract_yaml(f"```yaml\n{body}  - cut off mid") == body + "  - cut off mid\n"  # no closing fence
    assert with_name("# mine\nmeta:\n  name: x\n", "x") == "# mine\nmeta:\n  name: x\n"  # kept as written
    assert with_name("persona:\n  identity: I am.\n", "x").startswith("meta:\n  name: x\npersona:")


def test_help_runs_as_a_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "octrain", "constitution", "new", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=patience(120),
    )
    assert result.returncode == 0, result.stderr
    assert "--describe" in result.stdout and "--base-url" in result.stdout and "--local-model" in result.stdout
    assert "examples:" in result.stdout and "octrain constitution new gardener" in result.stdout


def test_a_tiny_local_model_draft_is_reported_and_not_saved(
    workdir: Path, tiny_model_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The tiny model is random: it cannot write YAML, so this is the reported-not-saved path, offline.
    args = ["constitution", "new", "gardener", "--describe", DESCRIPTION, "--local-model", tiny_model_path]
    assert main([*args, "--device", "cpu", "--max-tokens", "16", "--retries", "0", "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "octrain: error: " in err and "nothing was saved as 'gardener'" in err
    assert not user_dir(workdir).exists()
