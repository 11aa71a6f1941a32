"""The studio's entry script, run by ``streamlit run`` (see ``octrain ui``): the page navigation.

Each page is a ``render()`` function in :mod:`octrain.studio.views`; this script only lists them.
"""

from __future__ import annotations

from octrain.core.telemetry import disable_telemetry

disable_telemetry()  # before any library that reports usage is imported by a page

import streamlit as st  # noqa: E402

from octrain.studio.views import PAGES  # noqa: E402

st.set_page_config(page_title="octrain studio", page_icon=":material/theater_comedy:", layout="wide")
navigation = st.navigation(
    [
        st.Page(page.function, title=page.title, icon=page.icon, url_path=page.url_path, default=index == 0)
        for index, page in enumerate(PAGES)
    ]
)
st.sidebar.caption("octrain studio: every button runs the same code as the `octrain` command line.")
navigation.run()
