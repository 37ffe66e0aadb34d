"""Evaluation page script (Streamlit runs it; the logic is in ui.evaluation)."""

from ui.evaluation import render

render()
