"""Chat page script (Streamlit runs it; the logic is in ui.chat)."""

from ui.chat import render

render()
