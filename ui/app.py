"""The script `rag ui` hands to `streamlit run`: settings, the optional password, navigation.

Run it through `rag ui` (which binds to 127.0.0.1 and passes `--config`); the page logic
lives in ui.chat, ui.knowledge and ui.evaluation.
"""

from __future__ import annotations

import hmac
import sys
from pathlib import Path

import streamlit as st

from rag.config import ConfigError, Settings
from ui import state
from ui.auth import shared_brake

AUTH_KEY = "_authenticated"
ASSETS = Path(__file__).resolve().parent / "assets"


def signed_in(settings: Settings) -> bool:
    """True when no password is set, or this session has given it.  Nothing else on any page
    runs (so nothing from a knowledge base is sent) until it has."""
    secret = settings.ui.password
    if secret is None or st.session_state.get(AUTH_KEY):
        return True
    address = st.context.ip_address  # None on localhost
    client = address if isinstance(address, str) and address else "local"
    st.space("large")  # clear of the header bar, which has no sidebar to sit beside here
    _, middle, _ = st.columns([1, 2, 1])
    with middle, st.form("sign_in"):
        st.subheader("Sign in")
        st.caption("This document assistant is protected by a password.")
        given = st.text_input("Password", type="password")
        if st.form_submit_button("Sign in", type="primary"):
            wait = shared_brake().wait_s(client)
            if wait > 0:  # not even checked: a guesser gains nothing by trying faster
                st.error(f"Too many wrong passwords. Try again in {wait:.0f} s.")
            elif hmac.compare_digest(given.encode(), secret.get_secret_value().encode()):
                shared_brake().succeeded(client)
                st.session_state[AUTH_KEY] = True
                st.rerun()
            else:
                wait = shared_brake().failed(client)
                st.error("Wrong password." + (f" Try again in {wait:.0f} s." if wait else ""))
    return False


def main() -> None:
    st.set_page_config(page_title="Document Q&A", page_icon=":material/menu_book:", layout="wide")
    state.inject_css()
    st.logo(str(ASSETS / "logo.svg"), size="large", icon_image=str(ASSETS / "icon.svg"))
    try:
        settings = state.load(sys.argv[1:])
    except ConfigError as exc:
        st.error(str(exc))
        st.stop()
    if not signed_in(settings):
        return
    pages = [
        st.Page("views/chat.py", title="Chat", icon=":material/forum:", default=True),
        st.Page("views/knowledge_bases.py", title="Knowledge bases", icon=":material/folder_open:"),
        st.Page("views/evaluation.py", title="Evaluation", icon=":material/monitoring:"),
    ]
    st.navigation(pages).run()


main()
