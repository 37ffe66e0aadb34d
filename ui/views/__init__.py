"""Page scripts Streamlit runs (ui/app.py registers them); each only calls its page's render()."""
