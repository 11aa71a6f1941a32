"""``octrain sample`` and ``octrain chat`` on a really trained tiny run.

The tiny model writes noise, so the answers are checked for their structure and for where
they come from: greedy answers of the base and of the trained weights differ, the same model
with the same seed says the same thing twice, and a streamed answer equals a batched one.
``chat`` runs in a real pseudo-terminal: keystrokes go in, the screen is read back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import run_cli
from octrain.cli import main as octrain_main
from octrain.cli.sample import format_columns, format_stacked
from octrain.core.errors import ConfigError, RegistryError
from octrain.samplers.base import Completion
from octrain.use.chat import (
    Answer,
    ChatSession,
    Speaker,
    constitution_prompt,
    displayable,
    pick_model,
    sampler_config,
    sampling_params,
)
from octrain.use.model_choice import base_of
from terminal import Terminal

SEA = "Tell me about the sea."  # a prompt whose greedy answers differ between the tiny base and the trained model


def sample_json(root: Path, *args: str) -> dict:
    result = run_cli("sample", *args, "--run-root", str(root), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def texts(report: dict, role: str) -> list[str]:
    [model] = [m for m in report["models"] if m["role"] == role]
    return [answer["text"] for answer in model["answers"]]


@pytest.fixture(scope="module")
def compared(trained_tiny_root: Path) -> dict:
    """``sample --compare`` with greedy decoding: the base's and the trained model's answer."""
    return sample_json(trained_tiny_root, SEA, "--persona", "pirate", "--compare", "--temperature", "0")


# --- help and errors: no model is loaded -------------------------------------------------------


@pytest.mark.parametrize("command", ["sample", "chat"])
def test_help_runs(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert octrain_main([command, "--help"]) == 0
    shown = capsys.readouterr().out
    assert "examples:" in shown and "--persona" in shown and "--sampler" in shown
    if command == "chat":
        assert "/switch NAME" in shown and "/save FILE" in shown and "cannot stream" in shown


@pytest.mark.parametrize("command", [["sample", "hello"], ["chat"]])
def test_unknown_checkpoint_is_one_line_with_a_suggestion(
    command: list[str], trained_tiny_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = octrain_main([*command, "-c", "pirate_tiny/sfx", "--run-root", str(trained_tiny_root)])
    captured = capsys.readouterr()
    assert status == 2
    [line] = captured.err.strip().splitlines()
    assert line.startswith("octrain: error: ") and "did you mean pirate_tiny/sft" in line
    assert captured.out == ""


def test_unknown_checkpoint_from_the_console(trained_tiny_root: Path) -> None:
    result = run_cli("sample", "hello", "-c", "nobody/sft", "--run-root", str(trained_tiny_root))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("octrain: error: ") and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--with-constitution", "--persona", "pirate"], "add --base"),
        (["--compare", "--base", "--persona", "pirate"], "drop --base"),
        (["pirate_tiny/sft", "-c", "pirate_tiny/dpo"], "not both"),
        (["--persona", "pirate", "--temperature", "-1"], "--temperature"),
        ([], "which model?"),
    ],
)
def test_bad_combinations_are_refused(
    args: list[str], message: str, trained_tiny_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert octrain_main(["sample", "hello", *args, "--run-root", str(trained_tiny_root)]) == 2
    assert message in capsys.readouterr().err


def test_model_choice_and_system_prompts(trained_tiny_root: Path) -> None:
    chosen = pick_model(persona="pirate", run_root=trained_tiny_root)
    assert chosen.label == "pirate_tiny/sft" and not chosen.is_base
    # A spec that is no checkpoint is tried as a persona, as /switch pirate needs.
    assert pick_model("pirate", run_root=trained_tiny_root).label == "pirate_tiny/sft"
    base = pick_model("pirate_tiny/dpo", base=True, run_root=trained_tiny_root)
    assert base.is_base and base.ref.adapter is None and base.ref.base == "builtin:tiny-qwen3"
    prompt = constitution_prompt(base)
    traits = base.constitution().numbered_traits()
    assert traits in prompt and prompt.startswith("The assistant is Tiny")  # the run's student name
    with pytest.raises(RegistryError, match="did you mean"):
        pick_model("pirate_tiny/dp", run_root=trained_tiny_root)
    # The run's own sampling is the default; the user's values replace it.
    run = chosen.run_config().eval.sampling
    params = sampling_params(chosen, temperature=0.0)
    assert params.temperature == 0.0 and params.max_new_tokens == run.max_new_tokens
    with pytest.raises(ConfigError, match="--sampler"):
        sampler_config(chosen, "nonsense")


# --- sample: real answers from the tiny model ------------------------------------------------------


def test_compare_answers_with_base_and_trained_weights(compared: dict, trained_tiny_root: Path) -> None:
    assert compared["prompt"] == SEA and compared["sampling"]["temperature"] == 0.0
    base, trained = compared["models"]
    assert (base["role"], trained["role"]) == ("base", "trained")
    assert base["adapter"] is None and base["base_model"] == "builtin:tiny-qwen3"
    assert trained["model"] == "pirate_tiny/sft" and trained["adapter"].endswith("sft/adapter")
    assert base["persona"] == trained["persona"] == "pirate"
    [base_text], [trained_text] = texts(compared, "base"), texts(compared, "trained")
    assert base_text and trained_text
    assert base_text != trained_text  # greedy on different weights


def test_base_alone_is_the_base_of_the_comparison(compared: dict, trained_tiny_root: Path) -> None:
    result = run_cli(
        "sample", SEA, "--persona", "pirate", "--base", "--temperature", "0", "--run-root", str(trained_tiny_root)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    heading, *body = result.stdout.strip().splitlines()
    assert heading == "=== BASE: builtin:tiny-qwen3 ==="
    assert displayable(texts(compared, "base")[0]) in "\n".join(body)


def test_base_with_the_constitution(trained_tiny_root: Path) -> None:
    report = sample_json(trained_tiny_root, SEA, "-c", "pirate_tiny/dpo", "--base", "--with-constitution", "-n", "2")
    [model] = report["models"]
    assert model["role"] == "base" and model["with_constitution"] and model["adapter"] is None
    chosen = pick_model("pirate_tiny/dpo", base=True, run_root=trained_tiny_root)
    assert model["system"] == constitution_prompt(chosen)
    assert len(model["answers"]) == 2 and all(answer["num_tokens"] > 0 for answer in model["answers"])


@pytest.mark.slow  # three sampling commands (~15 s): the slow lane, which CI runs
def test_same_model_and_seed_give_the_same_answer(trained_tiny_root: Path) -> None:
    common = ("--temperature", "1.0", "--seed", "11")
    by_persona = sample_json(trained_tiny_root, SEA, "--persona", "pirate", *common)
    by_name = sample_json(trained_tiny_root, SEA, "-c", "pirate_tiny/sft", *common)
    assert by_persona["models"][0]["model"] == by_name["models"][0]["model"] == "pirate_tiny/sft"
    assert texts(by_persona, "trained") == texts(by_name, "trained")
    assert texts(by_persona, "trained")[0]


def test_dpo_checkpoint_by_name(compared: dict, trained_tiny_root: Path) -> None:
    report = sample_json(trained_tiny_root, SEA, "-c", "pirate_tiny/dpo", "--temperature", "0")
    [model] = report["models"]
    assert model["model"] == "pirate_tiny/dpo" and model["adapter"].endswith("dpo/adapter")
    assert texts(report, "trained")[0] != texts(compared, "base")[0]


def test_side_by_side_and_stacked_layouts(trained_tiny_root: Path) -> None:
    trained = pick_model(persona="pirate", run_root=trained_tiny_root)
    answers = [
        Answer(Speaker(base_of(trained), role="base"), [Completion("Arr " * 40, 40, finished=True)]),
        Answer(Speaker(trained), [Completion("Ahoy there", 3, finished=False)]),
    ]
    columns = format_columns(answers, 100).splitlines()
    assert columns[0].startswith("BASE: builtin:tiny-qwen3") and "| TRAINED: pirate_tiny/sft" in columns[0]
    assert all(len(line) <= 100 for line in columns)
    assert "| Ahoy there [cut off" in columns[2]
    stacked = format_stacked(answers)
    assert stacked.index("=== BASE") < stacked.index("=== TRAINED: pirate_tiny/sft ===")


# --- chat: the session as a library ----------------------------------------------------------


def test_session_history_reset_switch_and_save(trained_tiny_root: Path, tmp_path: Path) -> None:
    """The fake backend answers whole (it cannot stream): the session logic without a model."""
    chosen = pick_model(persona="pirate", run_root=trained_tiny_root)
    session = ChatSession(
        chosen,
        settings=sampler_config(chosen, "fake"),
        params=sampling_params(chosen, seed=1),
        run_root=trained_tiny_root,
        system="Be brief.",
    )
    assert not session.streams
    first = "".join(session.send("Hello"))
    assert first.startswith("This is fake reply")
    second = session.send("And again?")
    assert list(second) == [second.completion.text]
    assert [m["role"] for m in session.messages()] == ["system", "user", "assistant", "user", "assistant"]
    assert first != second.completion.text  # each turn its own seed
    session.reset()
    assert session.messages() == [{"role": "system", "content": "Be brief."}]
    session.switch("pirate_tiny/dpo")
    session.set_system(None)
    turn = session.send("Who are you now?")
    turn.cancel()  # cancelled before it ran: no answer, and the message is taken back
    assert list(turn) == [] and not turn.kept and session.history == []
    "".join(session.send("Who are you now?"))
    out = tmp_path / "chat.jsonl"
    assert session.save(out) == 2
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["messages"][:2] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]
    assert lines[1] == {"messages": session.messages()} and lines[1]["messages"][0]["role"] == "user"
    assert session.model.label == "pirate_tiny/dpo"


def test_streamed_answer_is_the_batched_answer(trained_tiny_root: Path) -> None:
    from octrain.samplers import release_engines
    from octrain.samplers.streaming import stream_answer
    from octrain.use.chat import load_sampler

    chosen = pick_model("pirate_tiny/sft", run_root=trained_tiny_root)
    params = sampling_params(chosen, temperature=0.9, max_new_tokens=24)
    sampler = load_sampler(chosen, sampler_config(chosen, "hf"))
    try:
        conversation = [{"role": "user", "content": SEA}]
        [[batched]] = sampler.chat([conversation], params, seeds=[7], progress=False)
        with stream_answer(sampler, conversation, params, seed=7) as stream:
            chunks = list(stream)
        assert len(chunks) > 1  # it really arrived in pieces
        assert stream.completion == batched
        # Cancelled after its first piece, the answer stops early and keeps what was written.
        long = sampling_params(chosen, temperature=0.0, max_new_tokens=2000)
        with stream_answer(sampler, conversation, long, seed=7) as stream:
            for _ in stream:
                stream.cancel()
        assert stream.cancelled and not stream.completion.finished
        assert 0 < stream.completion.num_tokens < 2000 and stream.completion.text
    finally:
        sampler.close()
        release_engines()


# --- chat: in a real terminal ----------------------------------------------------------------------


def streamed_then_stopped(term: Terminal, label: str, message: str) -> str:
    """Send ``message``, see the answer arrive while it is still being written, stop it; what was shown.

    The answer can run to thousands of tokens (greedy, no end of turn): the check that part of
    it is on the screen while the prompt has not come back, and that Ctrl-C then finds it still
    running ("[stopped"), does not depend on how fast the machine is.
    """
    start = len(term.screen)
    term.type(message + "\r")
    begins = term.wait_for(f"{label}> ", start=start) + len(label) + 2
    deadline = time.monotonic() + 120
    while len(term.screen) < begins + 120:
        assert time.monotonic() < deadline, f"no streamed text; screen ends {term.screen[-800:]!r}"
        term.read()
    assert b"you> " not in term.screen[begins:], "the turn ended before its text was seen"
    term.type("\x03")
    stopped = term.wait_for("[stopped: it stays in the conversation]", start=begins)
    term.wait_for("you> ", start=stopped)
    shown = term.screen[begins:stopped].decode("utf-8", errors="replace").replace("\r\n", "\n")
    # The terminal echoes the Ctrl-C as "^C", wherever the program's output had got to.
    return shown.replace("^C", "").rstrip()


def test_chat_in_a_terminal(trained_tiny_root: Path, tmp_path: Path) -> None:
    root = str(trained_tiny_root)
    term = Terminal("chat", "--persona", "pirate", "--temperature", "0", "--max-new-tokens", "3000", "--run-root", root)
    term.wait_for("answers are streamed as they are written")
    term.wait_for("you> ")

    first = streamed_then_stopped(term, "pirate_tiny/sft", SEA)
    term.command("/system Speak like a pirate.", "[system prompt set")
    term.command("/system", "system prompt: Speak like a pirate.")
    term.command("/switch pirate_tiny/nope", "did you mean")
    term.command("/switch pirate_tiny/dpo", "[now talking to pirate_tiny/dpo; the conversation so far is kept")
    second = streamed_then_stopped(term, "pirate_tiny/dpo", "Hello again.")
    term.command("/reset", "[new conversation]")
    third = streamed_then_stopped(term, "pirate_tiny/dpo", "What is a ship?")
    saved = tmp_path / "chat.jsonl"
    term.command(f"/save {saved}", "[saved 2 conversations")
    term.command("/bogus", "unknown command /bogus")
    term.type("\x04")  # Ctrl-D at the prompt
    assert term.exit_status() == 0
    assert "Traceback" not in term.text()

    lines = [json.loads(line) for line in saved.read_text(encoding="utf-8").splitlines()]
    system = {"role": "system", "content": "Speak like a pirate."}
    one, two = (line["messages"] for line in lines)
    assert [m["role"] for m in one] == ["system", "user", "assistant", "user", "assistant"]
    assert one[0] == system and one[1]["content"] == SEA and one[3]["content"] == "Hello again."
    assert two[0] == system and two[1] == {"role": "user", "content": "What is a ship?"}
    # What the conversation keeps is exactly what the screen showed.
    for shown, kept in zip((first, second, third), (one[2], one[4], two[2]), strict=True):
        assert shown and displayable(kept["content"]) == shown


def test_chat_with_the_base_and_ctrl_c_at_the_prompt(trained_tiny_root: Path) -> None:
    term = Terminal(
        "chat", "--persona", "pirate", "--base", "--with-constitution", "--run-root", str(trained_tiny_root)
    )
    term.wait_for("chatting with base builtin:tiny-qwen3, persona pirate")
    term.wait_for("system prompt: The assistant is Tiny")
    term.wait_for("you> ")
    term.type("\x03")
    assert term.exit_status() == 0
    assert "Traceback" not in term.text()


@pytest.mark.slow  # a chat process of its own (~15 s): the slow lane
def test_chat_told_bytes_that_are_not_utf8_says_so_and_goes_on(trained_tiny_root: Path) -> None:
    import subprocess
    import sys

    from conftest import REPO, patience

    command = [sys.executable, "-m", "octrain", "chat", "--persona", "pirate", "--run-root", str(trained_tiny_root)]
    piped = b"caf\xe9\n/reset\n/exit\n"  # Latin-1, piped into a UTF-8 chat
    result = subprocess.run(command, cwd=REPO, input=piped, capture_output=True, timeout=patience(120))
    out = result.stdout.decode("utf-8")
    assert result.returncode == 0, result.stderr.decode("utf-8", errors="replace")[-2000:]
    assert "that line is not UTF-8 text (byte 0xe9); nothing was sent" in out
    assert "[new conversation]" in out  # the chat went on to the next line
    assert b"Traceback" not in result.stderr
