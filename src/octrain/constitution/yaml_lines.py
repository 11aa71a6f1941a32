"""YAML with line numbers: every field's line for schema errors, and a syntax error's field.

PyYAML's own message for a syntax error is several lines and points where parsing gave
up, which is often the end of the file. A user needs the line where the broken construct
starts (an unclosed ``[``, a quote, a mapping indented wrongly) and the field it belongs to,
so :func:`syntax_error` replays the parser's events up to the failure to find both.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from octrain.constitution.where import located_error
from octrain.core.errors import DataFormatError

_KEY = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*:(?:\s|$)")
_PARENT = re.compile(r"^(.*)(?:\.[^.\[\]]+|\[\d+\])$")


class LocatedYaml:
    """A YAML document converted to Python values, remembering the line of every field."""

    def __init__(self, source: Path, text: str) -> None:
        self.source = source
        self.lines: dict[str, int] = {}
        self._scalars = yaml.SafeLoader("")
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            raise syntax_error(source, text, exc) from None
        self.value = self._convert(node, "") if node is not None else None

    def _convert(self, node: yaml.Node, path: str) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = str(key_node.value)
                child = f"{path}.{key}" if path else key
                result[key] = self._convert(value_node, child)
                self.lines[child] = key_node.start_mark.line + 1  # point at the key, not its value
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self._convert(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        return self._scalars.construct_object(node, deep=True)  # PyYAML resolves ints, bools, nulls

    def line(self, path: str) -> int | None:
        """The line of ``path``, or of its nearest parent that has one (a missing key has none)."""
        while path not in self.lines:
            parent = _PARENT.match(path)
            if parent is None:
                return None
            path = parent.group(1)
        return self.lines[path]

    def error(self, path: str, message: str) -> DataFormatError:
        return located_error(self.source, self.line(path), path, message)


class _Frame:
    """One open mapping or sequence while replaying parser events."""

    def __init__(self, is_mapping: bool) -> None:
        self.is_mapping = is_mapping
        self.key: str | None = None
        self.wants_key = is_mapping
        self.index = 0

    def advance(self) -> None:
        if self.is_mapping:
            self.wants_key = True
        else:
            self.index += 1


def _path(stack: list[_Frame]) -> str:
    """The field the next node in the event stream would fill."""
    path = ""
    for frame in stack:
        if frame.is_mapping:
            if frame.wants_key or frame.key is None:
                break  # between entries: the mapping itself is the place
            path = f"{path}.{frame.key}" if path else frame.key
        else:
            path = f"{path}[{frame.index}]"
    return path


def syntax_error(source: Path, text: str, exc: yaml.YAMLError) -> DataFormatError:
    """One line for a YAML syntax error: where the broken construct starts, and its field."""
    starts: dict[tuple[int, int], str] = {}
    stack: list[_Frame] = []
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                top = stack[-1] if stack else None
                as_key = top is not None and top.is_mapping and top.wants_key
                if not as_key:
                    starts[(event.start_mark.line, event.start_mark.column)] = _path(stack)
                if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                    if as_key and top is not None:  # a complex key: name it by its place
                        top.key, top.wants_key = "?", False
                    stack.append(_Frame(isinstance(event, yaml.MappingStartEvent)))
                elif as_key and top is not None:
                    top.key, top.wants_key = str(getattr(event, "value", "")), False
                elif top is not None:
                    top.advance()
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                stack.pop()
                if stack:
                    stack[-1].advance()
    except yaml.YAMLError:
        pass  # the same error as ``exc``: the replay has got as far as it can
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    problem_mark = getattr(exc, "problem_mark", None)
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context_mark is not None:
        line = context_mark.line + 1
        field = starts.get((context_mark.line, context_mark.column), _path(stack))
    else:
        line = problem_mark.line + 1 if problem_mark is not None else None
        field = _path(stack)
        # The scanner reads ahead, so a key on the failing line may not have reached the
        # parser yet; name it from the text when the replay stopped between a mapping's entries.
        if problem_mark is not None and stack and stack[-1].is_mapping and stack[-1].wants_key:
            lines = text.splitlines()
            key = _KEY.match(lines[problem_mark.line]) if problem_mark.line < len(lines) else None
            if key:
                field = f"{field}.{key.group(1)}" if field else key.group(1)
    message = f"not valid YAML: {problem}"
    if problem_mark is not None and problem_mark.line + 1 != line:
        message += f" at line {problem_mark.line + 1}"
    if context and context_mark is not None:
        message += f", {context} that starts here"
    return located_error(source, line, field, message)
