"""Knowledge bases page script (Streamlit runs it; the logic is in ui.knowledge)."""

from ui.knowledge import render

render()
