"""An Ollama ``Modelfile`` for a GGUF export: its chat template in Ollama's Go syntax, its stops and sampling.

Ollama does not run a model's Jinja chat template; a Modelfile's ``TEMPLATE`` is a Go
``text/template`` over ``.Messages`` (each with ``.Role`` and ``.Content``; Ollama merges
consecutive messages of one role and passes system messages in the list as well as in
``.System``). octrain writes that template for one family, the one every model it trains
uses: **ChatML** (``<|im_start|>role\\ncontent<|im_end|>\\n`` per message, then
``<|im_start|>assistant\\n``), with two variations read off the model's own template
(:func:`chat_format_of`):

* a default system prompt that the template adds when a conversation has none (SmolLM2's
  "You are a helpful AI assistant named SmolLM, trained by Hugging Face"; Qwen2.5's);
* text after the generation prompt (Qwen3 with thinking off: an empty ``<think>\\n\\n</think>\\n\\n``).

The variations are found by rendering probe conversations through the model's template and
then confirmed: :func:`render` (this module's Python rendering of the same format, which the Go
template spells out) must give the model's own rendering, character for character, for every
probe, or the export is refused. Tool calls, images and reasoning kept in earlier turns are
outside the format.

No ``SYSTEM`` line is written: the character was trained without a system prompt, its persona
is in the weights, and a system prompt would change its answers. The persona's name is in the
header comment and in the ``ollama create`` command it suggests.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from octrain.core.errors import ConfigError
from octrain.core.records import Message

MODELFILE = "Modelfile"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# Conversations whose rendering pins the format down: with and without a system prompt, with history.
_U1, _U2, _A1, _S = "PROBE-user-one", "PROBE-user-two", "PROBE-assistant-one", "PROBE-system"
PROBES: tuple[tuple[Message, ...], ...] = (
    ({"role": "user", "content": _U1},),
    ({"role": "system", "content": _S}, {"role": "user", "content": _U1}),
    ({"role": "user", "content": _U1}, {"role": "assistant", "content": _A1}, {"role": "user", "content": _U2}),
    (
        {"role": "system", "content": _S},
        {"role": "user", "content": _U1},
        {"role": "assistant", "content": _A1},
        {"role": "user", "content": _U2},
    ),
)
# Run settings -> Ollama PARAMETER names (repeat_penalty: Ollama looks back repeat_last_n = 64
# tokens, transformers over the whole sequence; the same for answers shorter than that).
OLLAMA_PARAMETERS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "min_p": "min_p",
    "repetition_penalty": "repeat_penalty",
}


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """A ChatML chat format: the default system prompt (None: none) and the text after the generation prompt."""

    default_system: str | None
    generation_suffix: str


def render(chat_format: ChatFormat, messages: Sequence[Message]) -> str:
    """``messages`` as ``chat_format`` renders them, generation prompt included: what
    :func:`go_template` makes Ollama send to the model."""
    parts = []
    if chat_format.default_system is not None and messages and messages[0]["role"] != "system":
        parts.append(f"{IM_START}system\n{chat_format.default_system}{IM_END}\n")
    for message in messages:
        parts.append(f"{IM_START}{message['role']}\n{message['content']}{IM_END}\n")
    parts.append(f"{IM_START}assistant\n{chat_format.generation_suffix}")
    return "".join(parts)


def go_template(chat_format: ChatFormat) -> str:
    """The Ollama (Go ``text/template``) spelling of :func:`render`."""
    head = ""
    if chat_format.default_system is not None:
        head = (
            '{{ if and .Messages (ne (index .Messages 0).Role "system") }}'
            f"{IM_START}system\n{chat_format.default_system}{IM_END}\n{{{{ end }}}}"
        )
    body = f"{{{{ range .Messages }}}}{IM_START}{{{{ .Role }}}}\n{{{{ .Content }}}}{IM_END}\n{{{{ end }}}}"
    return f"{head}{body}{IM_START}assistant\n{chat_format.generation_suffix}"


def chat_format_from_template(template: str) -> ChatFormat | None:
    """The :class:`ChatFormat` whose :func:`go_template` is exactly ``template``, or None."""
    match = re.fullmatch(
        r'(?:\{\{ if and \.Messages \(ne \(index \.Messages 0\)\.Role "system"\) \}\}'
        + re.escape(f"{IM_START}system\n")
        + r"(?P<system>.*?)"
        + re.escape(f"{IM_END}\n")
        + r"\{\{ end \}\})?"
        + re.escape("{{ range .Messages }}")
        + r".*?"
        + re.escape(f"{{{{ end }}}}{IM_START}assistant\n")
        + r"(?P<suffix>.*)",
        template,
        flags=re.DOTALL,
    )
    if match is None:
        return None
    chat_format = ChatFormat(match["system"], match["suffix"])
    return chat_format if go_template(chat_format) == template else None


def chat_format_of(tokenizer: Any, *, enable_thinking: bool) -> ChatFormat:
    """The ChatML variant ``tokenizer``'s chat template renders (with ``enable_thinking``), checked on :data:`PROBES`.

    Raises:
        ConfigError: the template is not ChatML, or renders some probe otherwise than
            :func:`render` does (the message names the probe and the first difference).
    """
    from octrain.samplers.rendering import render_prompt

    def hf(messages: Sequence[Message]) -> str:
        return render_prompt(tokenizer, messages, enable_thinking=enable_thinking)

    first = hf(PROBES[0])
    match = re.fullmatch(
        "(?:"
        + re.escape(f"{IM_START}system\n")
        + "(?P<system>.*?)"
        + re.escape(f"{IM_END}\n")
        + ")?"
        + re.escape(f"{IM_START}user\n{_U1}{IM_END}\n{IM_START}assistant\n")
        + "(?P<suffix>.*)",
        first,
        flags=re.DOTALL,
    )
    if match is None:
        raise ConfigError(
            "Ollama export: the chat template is not ChatML (<|im_start|>role ... <|im_end|>), the one format "
            f"octrain writes as an Ollama template; it renders a user message as {first[:120]!r}"
        )
    chat_format = ChatFormat(match["system"], match["suffix"])
    for text in (chat_format.default_system or "", chat_format.generation_suffix):
        if "{{" in text or '"""' in text:
            raise ConfigError(f"Ollama export: the template's fixed text {text[:60]!r} cannot go in a Modelfile")
    for probe in PROBES:
        expected, got = hf(probe), render(chat_format, probe)
        if expected != got:
            at = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), len(got))
            roles = "/".join(message["role"] for message in probe)
            raise ConfigError(
                f"Ollama export: the chat template is ChatML with differences octrain does not write "
                f"(a {roles} conversation, at character {at}: {expected[at : at + 60]!r})"
            )
    return chat_format


def modelfile_text(
    *,
    gguf_name: str,
    chat_format: ChatFormat,
    stops: Sequence[str],
    settings: Mapping[str, float],
    num_ctx: int | None,
    model_name: str,
    about: str,
) -> str:
    """A Modelfile for ``gguf_name`` (beside it): FROM, TEMPLATE, stop and sampling PARAMETERs.

    ``settings`` uses octrain's names (``temperature``, ``top_p``, ``min_p``,
    ``repetition_penalty``); ``model_name`` is the name the header suggests for ``ollama create``.
    """
    lines = [
        f"# {about}",
        "# Create and talk to it with Ollama:",
        f"#   ollama create {model_name} -f Modelfile",
        f"#   ollama run {model_name}",
        "# No SYSTEM prompt: the character was trained without one, so it is in the weights; a system",
        "# prompt would change its answers. The TEMPLATE is the model's own chat template (ChatML)"
        + (
            ",\n# with the default system prompt it adds when a conversation has none."
            if chat_format.default_system is not None
            else "."
        ),
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{go_template(chat_format)}"""',
    ]
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    for key, value in settings.items():
        lines.append(f"PARAMETER {OLLAMA_PARAMETERS[key]} {_number(value)}")
    if num_ctx:
        lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclasses.dataclass(frozen=True)
class Modelfile:
    """A Modelfile as :func:`read_modelfile` reads it back.

    Attributes:
        from_file: the FROM path, ``./`` removed.
        template: the TEMPLATE text.
        chat_format: the :class:`ChatFormat` the TEMPLATE spells, or None when it is not one octrain writes.
        stops: the ``stop`` PARAMETERs.
        settings: the other PARAMETERs that octrain writes, under octrain's names (numbers).
        num_ctx: the ``num_ctx`` PARAMETER, when set.
    """

    from_file: str
    template: str
    chat_format: ChatFormat | None
    stops: tuple[str, ...]
    settings: dict[str, float]
    num_ctx: int | None

    def render(self, messages: Sequence[Message]) -> str:
        """What the TEMPLATE makes of ``messages``; a template octrain does not write renders as an empty string."""
        return render(self.chat_format, messages) if self.chat_format is not None else ""


def read_modelfile(path: Path) -> Modelfile:
    """Read back the parts of a Modelfile :func:`modelfile_text` writes.

    Raises:
        ConfigError: no FROM or no TEMPLATE.
    """
    text = path.read_text(encoding="utf-8")
    template = re.search(r'^TEMPLATE """(.*?)"""', text, flags=re.DOTALL | re.MULTILINE)
    source = re.search(r"^FROM (.+)$", text, flags=re.MULTILINE)
    if template is None or source is None:
        raise ConfigError(f"{path}: a Modelfile needs FROM and TEMPLATE")
    stops: list[str] = []
    settings: dict[str, float] = {}
    num_ctx = None
    by_ollama_name = {ollama: ours for ours, ollama in OLLAMA_PARAMETERS.items()}
    for name, value in re.findall(r"^PARAMETER (\S+) (.+)$", text, flags=re.MULTILINE):
        if name == "stop":
            stops.append(value.strip().removeprefix('"').removesuffix('"'))
        elif name == "num_ctx":
            num_ctx = int(value)
        elif name in by_ollama_name:
            settings[by_ollama_name[name]] = float(value)
    return Modelfile(
        from_file=source.group(1).strip().removeprefix("./"),
        template=template.group(1),
        chat_format=chat_format_from_template(template.group(1)),
        stops=tuple(stops),
        settings=settings,
        num_ctx=num_ctx,
    )
