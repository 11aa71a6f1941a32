"""Run one studio page under Streamlit's ``AppTest``, for the studio's test modules.

``page("chat")`` builds an ``AppTest`` that runs ``octrain.studio.views.chat.render()`` as the
server would; :func:`texts` reads the values of a list of drawn elements.
"""

from __future__ import annotations

from streamlit.testing.v1 import AppTest


def _page(name: str) -> None:
    # AppTest runs this function's source as a script: everything it needs is imported inside.
    import importlib

    importlib.import_module(f"octrain.studio.views.{name}").render()


def page(name: str, timeout: float = 60) -> AppTest:
    return AppTest.from_function(_page, args=(name,), default_timeout=timeout)


def texts(elements: object) -> list[str]:
    return [str(element.value) for element in elements]  # type: ignore[attr-defined]
