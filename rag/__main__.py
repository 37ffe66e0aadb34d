"""`python -m rag`: the command line, which lives in the cli package above the core."""

from cli.main import app

app()
