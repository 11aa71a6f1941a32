"""The studio's pages, in the order the navigation shows them.

Each module has a ``render()`` that draws the page; they import lazily so that opening one page
does not import the libraries (torch, transformers) another one needs. The package is not
called ``pages``: Streamlit takes a ``pages/`` folder beside the entry script for pages of its
older multipage scheme, and would list every module of it as a page of its own.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class PageInfo:
    module: str
    title: str
    icon: str
    url_path: str

    def render(self) -> None:
        importlib.import_module(f"{__name__}.{self.module}").render()

    @property
    def function(self) -> Callable[[], None]:
        """A function of the page's own name: Streamlit tells pages given as callables apart by name."""

        def page() -> None:
            self.render()

        page.__name__ = page.__qualname__ = self.module
        return page


def _page(module: str, title: str, icon: str) -> PageInfo:
    return PageInfo(module, title, f":material/{icon}:", module.replace("_", "-"))


PAGES: tuple[PageInfo, ...] = (
    _page("constitutions", "Constitutions", "edit_note"),
    _page("data_preview", "Data preview", "compare"),
    _page("train", "Train", "model_training"),
    _page("runs", "Runs", "monitoring"),
    _page("evaluate", "Evaluate", "analytics"),
    _page("chat", "Chat and compare", "forum"),
    _page("wizard", "Wizard", "auto_fix_high"),
    _page("deploy", "Deploy", "rocket_launch"),
)
