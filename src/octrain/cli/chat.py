"""``octrain chat``: an interactive conversation with a trained model in the terminal.

The conversation itself is :class:`octrain.use.chat.ChatSession` (history, system prompt,
switching models, saving); this module is the terminal around it: a readline prompt, the
answer written as it streams, the slash commands, and the keys. Ctrl-C while the model writes
stops that answer and comes back to the prompt; Ctrl-C or Ctrl-D at the prompt ends the chat.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from octrain.cli.sample import add_model_options, add_sampling_options, chosen_spec, quiet_loading, speaker_for

USER_PROMPT = "you> "

COMMANDS = """commands:
  /reset          start a new conversation (the old one stays in what /save writes)
  /switch NAME    talk to another model from the next turn: a checkpoint name, a persona
                  or a path; the conversation so far is kept (/reset to start afresh)
  /system TEXT    set the system prompt for the whole conversation; /system alone shows it,
                  /system - removes it
  /save FILE      write every conversation of this chat to FILE as TRL "messages" JSONL
  /help           this list
  /exit           end the chat (also Ctrl-D, or Ctrl-C at the prompt)
A message that starts with / is sent as it is when it starts with // (the first / dropped).
Ctrl-C while the model writes stops the answer; what it wrote so far stays in the conversation."""

EXAMPLES = f"""examples:
  octrain chat --persona pirate
  octrain chat pirate_mini/dpo --temperature 0.3
  octrain chat --persona pirate --base --with-constitution
  octrain chat runs/pirate_mini --sampler vllm --max-new-tokens 512
  octrain chat --persona pirate --no-thinking      # a reasoning (Qwen3) student, answering at once

{COMMANDS}

Answers appear token by token with the transformers backend (--sampler hf, the default on
most runs); a backend that cannot stream (vllm, fake) prints each answer whole when it is
done. Sampling defaults to the run's own settings (its eval stage's). With --thinking a
reasoning model's thought streams first, between <think> and </think>; /save keeps it as written."""


class ChatScreen:
    """The terminal side of a chat: reads lines, runs commands, writes answers as they stream."""

    def __init__(self, session: Any, out: TextIO = sys.stdout) -> None:
        self.session = session
        self.out = out

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def banner(self) -> None:
        how = "streamed as they are written" if self.session.streams else "shown whole (this backend cannot stream)"
        model = self.session.model
        persona = f", persona {model.persona}" if model.persona else ""
        self.say(f"chatting with {model.label}{persona}; answers are {how}.")
        if model.model_config().enable_thinking:
            self.say("thinking is on: the model's thought comes first, between <think> and </think>.")
        elif self.session.thinking is False:
            self.say("thinking is off (--no-thinking).")
        if self.session.system:
            self.say(f"system prompt: {_shorten(self.session.system)}")
        self.say("/help lists the commands; Ctrl-D or /exit ends the chat.")

    def run(self) -> int:
        """Read and answer lines until the user leaves; the exit status (0)."""
        while True:
            try:
                line = input(USER_PROMPT)
            except (EOFError, KeyboardInterrupt):  # Ctrl-D, or Ctrl-C at the prompt: leave
                self.say("")
                return 0
            text = line.strip()
            if not text:
                continue
            undecodable = _not_utf8(text)
            if undecodable is not None:  # piped bytes that are not UTF-8 arrive as surrogates: say so, send nothing
                self.say(f"octrain: that line is not UTF-8 text (byte 0x{undecodable:02x}); nothing was sent")
                continue
            if text.startswith("/") and not text.startswith("//"):
                if self.command(text) == "exit":
                    return 0
                continue
            self.answer(text[1:] if text.startswith("//") else text)

    def answer(self, text: str) -> None:
        """Send ``text`` and write the answer as it comes; Ctrl-C stops it."""
        from octrain.core.errors import OctrainError
        from octrain.use.chat import displayable

        self.out.write(f"{self.session.model.label}> ")
        self.out.flush()
        turn = None
        try:
            turn = self.session.send(text)
            with _ctrl_c_cancels(turn, self.session.streams):
                for chunk in turn:
                    self.out.write(displayable(chunk))
                    self.out.flush()
        except KeyboardInterrupt:
            if turn is not None:
                turn.cancel()
        except OctrainError as exc:  # a backend that cannot answer (a missing key, say): the chat goes on
            self.say(f"\noctrain: error: {exc}")
            return
        finally:
            if turn is not None:
                turn.close()
        self.say("")
        if turn is None:
            self.say("[stopped before the answer began]")
        elif turn.cancelled:
            kept = "it stays in the conversation" if turn.kept else "nothing was written, so it is dropped"
            self.say(f"[stopped: {kept}]")
        elif not turn.completion.finished:
            self.say(f"[cut off at {turn.completion.num_tokens} tokens: --max-new-tokens sets the limit]")

    def command(self, line: str) -> str | None:
        """Run one slash command; "exit" when the chat should end."""
        from octrain.core.errors import OctrainError

        name, _, argument = line.partition(" ")
        argument = argument.strip()
        try:
            if name in ("/exit", "/quit"):
                return "exit"
            if name == "/help":
                self.say(COMMANDS)
            elif name == "/reset":
                self.session.reset()
                self.say("[new conversation]")
            elif name == "/system":
                self.system(argument)
            elif name == "/switch":
                self.switch(argument)
            elif name == "/save":
                self.save(argument)
            else:
                self.say(f"unknown command {name}: /help lists them (start a message with // to send a /)")
        except OctrainError as exc:
            self.say(f"octrain: error: {exc}")
        except KeyboardInterrupt:
            self.say("\n[interrupted]")
        return None

    def system(self, argument: str) -> None:
        if not argument:
            shown = self.session.system if self.session.system else "(none)"
            self.say(f"system prompt: {shown}")
        elif argument == "-":
            self.session.set_system(None)
            self.say("[system prompt removed]")
        else:
            self.session.set_system(argument)
            self.say("[system prompt set: it applies to the whole conversation from the next answer]")

    def switch(self, argument: str) -> None:
        if not argument:
            self.say(f"talking to {self.session.model.label}; /switch NAME changes it")
            return
        from octrain.use.chat import pick_model

        # A wrong name: an error, nothing unloaded. The session's --thinking choice carries over.
        chosen = pick_model(argument, run_root=self.session.run_root, thinking=self.session.thinking)
        self.say(f"[loading {chosen.label} ...]")
        self.session.switch(chosen, keep_history=True)
        kept = "the conversation so far is kept" if self.session.history else "no conversation yet"
        self.say(f"[now talking to {chosen.label}; {kept} (/reset starts afresh)]")

    def save(self, argument: str) -> None:
        if not argument:
            self.say("/save FILE: which file? e.g. /save chat.jsonl")
            return
        from pathlib import Path

        path = Path(argument).expanduser()
        try:
            count = self.session.save(path)
        except OSError as exc:
            self.say(f"octrain: error: cannot write {path}: {exc.strerror or exc}")
            return
        noun = "conversation" if count == 1 else "conversations"
        self.say(f"[saved {count} {noun} to {path}]")


def _not_utf8(text: str) -> int | None:
    """The first byte that was not UTF-8 in a line read from stdin (Python keeps it as a surrogate), or None."""
    for char in text:
        if 0xDC80 <= ord(char) <= 0xDCFF:
            return ord(char) - 0xDC00
    return None


@contextlib.contextmanager
def _ctrl_c_cancels(turn: Any, streams: bool) -> Iterator[None]:
    """While a streamed answer is written, Ctrl-C cancels it instead of raising KeyboardInterrupt.

    The generation then stops at its next token and the stream ends by itself, so every chunk
    the conversation keeps has been written to the screen, none twice: an exception could land
    between a chunk's arrival and its display. A second Ctrl-C, for a model slow to stop, raises
    as usual. A backend that answers whole cannot be cancelled midway: there KeyboardInterrupt
    interrupts the call, as anywhere else.
    """
    if not streams:
        yield
        return

    def cancel(signum: int, frame: object) -> None:
        if turn.cancelled:
            raise KeyboardInterrupt
        turn.cancel()

    previous = signal.signal(signal.SIGINT, cancel)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _shorten(text: str, limit: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _enable_line_editing() -> None:
    """readline's editing and in-session history for input(), where the platform has it."""
    with contextlib.suppress(ImportError):  # Windows has no readline: plain input() then
        import readline  # noqa: F401  (importing it is what switches it on for input())


def chat_command(args: argparse.Namespace) -> int:
    from octrain.core.errors import ConfigError
    from octrain.use.chat import ChatSession, pick_model, sampler_config, sampling_params

    if args.with_constitution and not args.base:
        raise ConfigError("--with-constitution is for the base model: add --base")
    chosen = pick_model(
        chosen_spec(args), persona=args.persona, base=args.base, run_root=args.run_root, thinking=args.thinking
    )
    speaker = speaker_for(args, chosen, constitution=args.with_constitution)
    params = sampling_params(
        chosen, seed=args.seed, temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens
    )
    session = ChatSession(
        chosen,
        settings=sampler_config(chosen, args.sampler),
        params=params,
        run_root=args.run_root,
        system=speaker.system,
    )
    quiet_loading()
    _enable_line_editing()
    screen = ChatScreen(session)
    try:
        screen.say(f"[loading {chosen.label} ...]")
        session.load()
        screen.banner()
        return screen.run()
    except KeyboardInterrupt:  # while loading, or a second Ctrl-C while an answer was stopping
        screen.say("")
        return 130
    finally:
        session.close()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``chat`` to the ``octrain`` command line."""
    summary = "talk with a trained model (or its base) in the terminal"
    parser = subparsers.add_parser(
        "chat",
        help=summary,
        description=summary[0].upper() + summary[1:] + ": history, streamed answers, /commands.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(parser)
    add_sampling_options(parser)
    parser.set_defaults(func=chat_command)
