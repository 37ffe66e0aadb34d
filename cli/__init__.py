"""`rag`, the command line: a thin layer over the core (rag), ingest and evaluation.

main.py is the Typer app: the global --config option and the command groups, registered from
one module each (ingest.py, ask.py, kb.py, config.py, eval.py, tune.py, ui.py, and api.py, keys.py
and mcp.py over the server package).  Those modules
import only the shared helpers: common.py (exit statuses, one-line errors, the consoles, the
settings and the answering stack of a command) and display.py (what the terminal shows: text
from documents made printable, progress bars, the ingest summary).  Nothing outside this
package imports it, but `python -m rag`, which starts it.
"""
