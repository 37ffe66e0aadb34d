"""How `rag ui` starts Streamlit: the command line and its environment, kept apart from the CLI
so they can be checked without starting a server."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"
PROJECT_ROOT = APP.parent.parent

# A quiet, product-like Streamlit: no developer menu, no file watcher polling the source tree
# (it costs CPU on a small machine and nobody edits the app while using it), no telemetry.
_FIXED = {
    "server.headless": "true",
    "server.fileWatcherType": "none",
    "server.runOnSave": "false",
    "browser.gatherUsageStats": "false",
    "client.toolbarMode": "minimal",
    "theme.base": "light",
    "theme.primaryColor": "#2563eb",
}


def streamlit_command(host: str, port: int, max_upload_mb: float, config: Path | None) -> list[str]:
    """`python -m streamlit run ui/app.py ...`; the server refuses uploads past the limit too."""
    options = {
        **_FIXED,
        "server.address": host,
        "server.port": str(port),
        "server.maxUploadSize": str(max(1, math.ceil(max_upload_mb))),
    }
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP)]
    cmd += [f"--{key}={value}" for key, value in options.items()]
    if config is not None:
        cmd += ["--", "--config", str(config.resolve())]
    return cmd


def streamlit_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for the Streamlit process: it runs app.py as a script, so the packages
    must be importable from where this `rag` came from, installed or not."""
    env = dict(environ)
    paths = [str(PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env
