"""The web UI (Streamlit): chat with citations, knowledge-base management, evaluation reports.

Started by `rag ui`; `ui/app.py` is the script Streamlit runs.  Page logic lives in plain
functions here so it can be tested without a browser (Streamlit's AppTest) and the thin page
scripts in `ui/views/` only call them.
"""
