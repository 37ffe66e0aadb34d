"""The HTTP API and MCP tools of `rag api` and `rag mcp`: a thin layer above the core (rag),
ingest and its workers, which never import it.

app.py builds the FastAPI app from the settings (`create_app`); the routes are chat.py (OpenAI
chat completions), search.py and kbs.py (bases, documents, jobs); tools.py holds the MCP tools.
What they share is in services.py: bases.py (open knowledge bases, models loaded once), jobs.py
(ingest jobs), limits.py (rate, size, concurrency), auth.py and keys.py (API keys and roles),
answers.py (an answer as JSON, generated in a thread) and errors.py (the one error shape).
Importing this package imports none of them: `rag keys` needs only keys.py.
"""
