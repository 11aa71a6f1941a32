"""The thinking toggle: ``--thinking/--no-thinking`` and ``pick_model(thinking=...)``, end to end.

The tiny model's own template ignores ``enable_thinking``, so a copy of it wears Qwen3's
hybrid-thinking template (the copy TRL ships), under a copy of the trained tiny run whose
student was set to think: there the choice changes the prompt, hence the greedy answers, and
the checks below can tell whether it reached the model. The tiny tokenizer marks ``<think>``
as special (decoding drops it), so splitting a thought from its answer is checked on texts.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from importlib import resources
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import run_cli
from octrain.cli.chat import ChatScreen
from octrain.cli.sample import NO_ANSWER, answer_text, format_columns, format_stacked
from octrain.core.errors import ConfigError
from octrain.core.records import ModelRef
from octrain.samplers import release_engines
from octrain.samplers.base import Completion
from octrain.use.chat import (
    Answer,
    ChatSession,
    Speaker,
    load_sampler,
    pick_model,
    sampler_config,
    sampling_params,
    split_thought,
)
from octrain.use.model_choice import ChosenModel, base_of, choose_model, with_thinking
from terminal import Terminal

SEA = "Tell me about the sea."
PROMPT = [{"role": "user", "content": SEA}]
TOKENS = "64"  # greedy answers on the tiny model need this many tokens to part ways


@pytest.fixture(scope="module")
def thinking_run(trained_tiny_root: Path, tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained tiny run with ``student.enable_thinking: true``, its models on a copy
    of the tiny base that wears Qwen3's template (which reads ``enable_thinking``)."""
    from transformers import AutoTokenizer

    where = tmp_path_factory.mktemp("thinking")
    base = Path(shutil.copytree(tiny_model_path, where / "tiny-qwen3-template"))
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = resources.files("trl").joinpath("chat_templates", "qwen3.jinja").read_text("utf-8")
    tokenizer.save_pretrained(base)
    run = Path(shutil.copytree(trained_tiny_root / "pirate_tiny", where / "runs" / "pirate_think"))
    config = OmegaConf.load(run / "config.yaml")
    config.student.enable_thinking = True
    OmegaConf.save(config, run / "config.yaml")
    for stage in ("sft", "dpo"):  # the run's own adapters, on the base that wears Qwen3's template
        adapter = run / stage / Path(ModelRef.load(run / stage / "model.json").adapter or "").name
        assert (adapter / "adapter_config.json").is_file()
        ModelRef(base=str(base), adapter=str(adapter)).save(run / stage / "model.json")
    return run


def sample_json(*args: str) -> dict:
    result = run_cli("sample", SEA, *args, "--temperature", "0", "--max-new-tokens", TOKENS, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def greedy(chosen: ChosenModel, tokens: int = int(TOKENS)) -> str:
    """The greedy answer to :data:`PROMPT`, in this process, on the transformers backend."""
    sampler = load_sampler(chosen, sampler_config(chosen, "hf"))
    try:
        params = sampling_params(chosen, temperature=0.0, max_new_tokens=tokens)
        [[completion]] = sampler.chat([PROMPT], params, progress=False)
    finally:
        sampler.close()
    return completion.text


# --- the library: ChosenModel, with_thinking, pick_model, the session ---------------------------


def test_model_config_follows_the_choice_and_none_keeps_the_runs(trained_tiny_root: Path, thinking_run: Path) -> None:
    plain = pick_model("pirate_tiny/sft", run_root=trained_tiny_root)
    assert plain.thinking is None
    assert plain.model_config().enable_thinking is plain.run_config().student.enable_thinking is False
    on = with_thinking(plain, True)
    assert on.thinking is True and on.model_config().enable_thinking is True
    # Only enable_thinking changes: the rest is still the run's student, on this model's base.
    assert dataclasses.replace(on.model_config(), enable_thinking=False) == plain.model_config()
    assert with_thinking(on, None) is on and with_thinking(plain, None) is plain
    assert with_thinking(on, False).model_config().enable_thinking is False
    # The base of a model is asked the same way, through base_of and pick_model(base=True).
    assert base_of(on).is_base and base_of(on).model_config().enable_thinking is True
    base = pick_model("pirate_tiny/sft", base=True, thinking=True, run_root=trained_tiny_root)
    assert base.is_base and base.thinking is True and base.model_config().enable_thinking is True

    # A run trained to think: None keeps that, False turns it off.
    spec = str(thinking_run / "sft")
    assert pick_model(spec, run_root="/nowhere").model_config().enable_thinking is True
    off = pick_model(spec, run_root="/nowhere", thinking=False)
    assert off.model_config().enable_thinking is False and off.label == pick_model(spec, run_root="/nowhere").label
    # A model no run describes: transformers' default (no thinking), or the choice.
    bare = choose_model(str(thinking_run.parent.parent / "tiny-qwen3-template"), run_root="/nowhere")
    assert bare.run_dir is None and bare.model_config().enable_thinking is False
    assert with_thinking(bare, True).model_config().enable_thinking is True


def test_pick_model_thinking_reaches_the_hf_sampler_and_its_prompt(thinking_run: Path) -> None:
    spec = str(thinking_run / "sft")
    rendered = {}
    try:
        for choice in (None, True, False):
            chosen = pick_model(spec, run_root="/nowhere", thinking=choice)
            sampler = load_sampler(chosen, sampler_config(chosen, "hf"))
            engine = sampler.engine
            assert engine.enable_thinking is (True if choice is None else choice)  # None: the run's (on)
            rendered[choice] = engine.tokenizer.decode(engine.render(PROMPT))
            sampler.close()
    finally:
        release_engines()
    assert rendered[True].endswith("<|im_start|>assistant\n")  # Qwen3, thinking on: the model opens it
    assert rendered[False].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # off: an empty thought
    assert rendered[None] == rendered[True]


def test_a_session_keeps_its_thinking_choice_when_switching_by_name(trained_tiny_root: Path) -> None:
    """The fake backend loads nothing: the session's bookkeeping only."""
    chosen = pick_model("pirate_tiny/sft", run_root=trained_tiny_root, thinking=True)
    session = ChatSession(
        chosen, settings=sampler_config(chosen, "fake"), params=sampling_params(chosen), run_root=trained_tiny_root
    )
    assert session.thinking is True
    assert session.switch("pirate_tiny/dpo").thinking is True
    assert session.model.label == "pirate_tiny/dpo" and session.model.model_config().enable_thinking is True
    session.switch("pirate")  # a persona, looked up by name too
    assert session.thinking is True and session.model.label == "pirate_tiny/sft"
    # A chosen model brings its own choice, which the next switch by name keeps.
    session.switch(pick_model("pirate_tiny/sft", run_root=trained_tiny_root, thinking=False))
    assert session.switch("pirate_tiny/dpo").model_config().enable_thinking is False
    session.switch(pick_model("pirate_tiny/sft", run_root=trained_tiny_root))
    assert session.switch("pirate_tiny/dpo").thinking is None
    session.close()


# --- how a thought is shown ---------------------------------------------------------------------


def test_split_thought() -> None:
    assert split_thought("<think>x</think>answer") == ("x", "answer")
    assert split_thought("<think>\nweighing it\n</think>\n\nAhoy.") == ("weighing it", "Ahoy.")
    assert split_thought("the prompt opened it</think>Ahoy.") == ("the prompt opened it", "Ahoy.")
    assert split_thought("<think>still going") == ("still going", None)
    assert split_thought("  plain answer\n") == (None, "  plain answer\n")  # untouched
    assert split_thought("I write <think> tags mid-answer") == (None, "I write <think> tags mid-answer")


def test_the_thought_is_shown_apart_from_the_answer(trained_tiny_root: Path) -> None:
    assert answer_text(Completion("<think>x</think>answer", 5, finished=True)) == "[thinking]\nx\n[/thinking]\nanswer"
    assert answer_text(Completion("plain answer", 2, finished=True)) == "plain answer"
    assert answer_text(Completion("<think></think>Ahoy", 3, finished=True)) == "Ahoy"  # an empty thought: nothing
    unfinished = answer_text(Completion("<think>still going", 9, finished=False))
    assert unfinished == f"[thinking]\nstill going\n[/thinking]\n{NO_ANSWER} [cut off: 9 tokens, --max-new-tokens]"
    # The thought is terminal-safe too: an escape sequence in it does not reach the screen.
    shown = answer_text(Completion("<think>a\x1b[2Jb</think>ok\x07", 4, finished=True))
    assert "\x1b" not in shown and "\x07" not in shown and shown == "[thinking]\na\ufffd[2Jb\n[/thinking]\nok\ufffd"

    trained = pick_model(persona="pirate", run_root=trained_tiny_root)
    answers = [
        Answer(Speaker(base_of(trained), role="base"), [Completion("Arr.", 2, finished=True)]),
        Answer(Speaker(trained), [Completion("<think>Be a pirate.</think>Ahoy there", 8, finished=True)]),
    ]
    stacked = format_stacked(answers)
    assert stacked.endswith("=== TRAINED: pirate_tiny/sft ===\n[thinking]\nBe a pirate.\n[/thinking]\nAhoy there")
    columns = format_columns(answers, 100).splitlines()
    right = [line.partition(" | ")[2] for line in columns]
    assert right[2:6] == ["[thinking]", "Be a pirate.", "[/thinking]", "Ahoy there"]
    # --json: the text as written, the thought and the answer beside it.
    [completion] = answers[1].to_json()["answers"]
    assert completion["text"] == "<think>Be a pirate.</think>Ahoy there"
    assert (completion["thinking"], completion["answer"]) == ("Be a pirate.", "Ahoy there")
    [plain] = answers[0].to_json()["answers"]
    assert (plain["thinking"], plain["answer"]) == (None, "Arr.")


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.slow  # trains a thinking run first (23 s): the slow lane, which CI runs
def test_sample_json_and_no_thinking_on_a_run_that_thinks(thinking_run: Path) -> None:
    spec = str(thinking_run / "sft")
    runs = sample_json(spec)
    on = sample_json(spec, "--thinking")
    off = sample_json(spec, "--no-thinking", "--compare")
    assert runs["models"][0]["enable_thinking"] is True and on["models"][0]["enable_thinking"] is True
    assert [model["enable_thinking"] for model in off["models"]] == [False, False]  # the base is asked alike
    for report in (runs, on, off):
        for model in report["models"]:
            for answer in model["answers"]:
                assert answer["text"] and (answer["thinking"], answer["answer"]) == split_thought(answer["text"])
    [[run_text], [on_text]] = ([a["text"] for a in r["models"][-1]["answers"]] for r in (runs, on))
    off_text = off["models"][-1]["answers"][0]["text"]
    assert on_text == run_text  # the run's setting is on: --thinking changes nothing
    assert off_text != run_text  # another prompt (an empty thought in it), another greedy answer
    assert off_text == greedy(pick_model(spec, run_root="/nowhere", thinking=False))
    release_engines()


def test_thinking_option_in_the_help() -> None:
    for command in ("sample", "chat", "serve"):
        result = run_cli(command, "--help")
        assert result.returncode == 0
        assert "--thinking, --no-thinking" in result.stdout, command


def test_chat_banner_says_how_the_model_thinks(thinking_run: Path) -> None:
    from io import StringIO

    def banner(thinking: bool | None) -> str:
        chosen = pick_model(str(thinking_run / "sft"), run_root="/nowhere", thinking=thinking)
        session = ChatSession(
            chosen, settings=sampler_config(chosen, "fake"), params=sampling_params(chosen), run_root="/nowhere"
        )
        out = StringIO()
        ChatScreen(session, out=out).banner()
        return out.getvalue()

    assert "thinking is on" in banner(None) and "thinking is on" in banner(True)
    assert "thinking is off (--no-thinking)" in banner(False)


def test_chat_no_thinking_in_a_terminal(thinking_run: Path, tmp_path: Path) -> None:
    """``octrain chat --no-thinking`` answers as the model does with thinking off, and /save keeps the text."""
    spec = str(thinking_run / "sft")
    term = Terminal("chat", spec, "--no-thinking", "--temperature", "0", "--max-new-tokens", TOKENS)
    term.wait_for("thinking is off (--no-thinking)")
    term.wait_for("you> ")
    term.command(SEA, "you> ")
    saved = tmp_path / "chat.jsonl"
    term.command(f"/save {saved}", "[saved 1 conversation")
    term.type("\x04")
    assert term.exit_status() == 0 and "Traceback" not in term.text()
    [line] = saved.read_text(encoding="utf-8").splitlines()
    user, assistant = json.loads(line)["messages"]
    assert user == {"role": "user", "content": SEA}
    expected_off = greedy(pick_model(spec, run_root="/nowhere", thinking=False))
    assert assistant == {"role": "assistant", "content": expected_off}
    assert expected_off != greedy(pick_model(spec, run_root="/nowhere"))  # the option made the difference
    release_engines()


def test_serve_thinking(trained_tiny_root: Path, tiny_model_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from octrain.use import serving

    # octrain's transformers server: --thinking/--no-thinking, from the choice or the run (off for the tiny run).
    pytest.importorskip("starlette", reason="the [serve] extra is not installed")
    result = run_cli("serve", tiny_model_path, "--thinking", "--backend", "transformers", "--print-command")
    assert result.returncode == 0, result.stderr[-2000:]
    assert " --thinking" in result.stdout and "--no-thinking" not in result.stdout
    base = base_of(pick_model("pirate_tiny/sft", run_root=trained_tiny_root))
    argv = serving.plan_serving([base], names=["tiny"], backend="transformers").argv
    assert "--no-thinking" in argv and "--thinking" not in argv
    argv = serving.plan_serving([with_thinking(base, True)], names=["tiny"], backend="transformers").argv
    assert "--thinking" in argv and "--no-thinking" not in argv

    # vLLM: one server-wide default for the template; models that disagree need the choice made.
    monkeypatch.setattr(serving, "_script", lambda name: f"/env/bin/{name}")  # the plan only names the script
    sft, dpo = (choose_model(name, run_root=trained_tiny_root) for name in ("pirate_tiny/sft", "pirate_tiny/dpo"))

    def template_kwargs(models: list) -> dict:
        argv = serving.plan_serving(models, backend="vllm").argv
        return json.loads(argv[argv.index("--default-chat-template-kwargs") + 1])

    assert template_kwargs([sft, dpo]) == {"enable_thinking": False}
    assert template_kwargs([with_thinking(sft, True), with_thinking(dpo, True)]) == {"enable_thinking": True}
    with pytest.raises(ConfigError, match="--thinking or --no-thinking"):
        serving.plan_serving([with_thinking(sft, True), dpo], backend="vllm")
