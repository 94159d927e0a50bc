"""Shared fixtures: the real data folder beside the repository and the real reference model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from domdistill.models.gguf import CACHE_ENV, converted_folder, reference_gguf

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"real data expected at {SHARED_DATA}"
    return SHARED_DATA


# Converted GGUF models land in the checkout's .cache (gitignored), not the user's home.
os.environ.setdefault(CACHE_ENV, str(REPO / ".cache"))


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real pretrained reference model as shipped: SmolLM2-135M-Instruct, a GGUF file."""
    from domdistill.errors import ConfigError

    try:
        return reference_gguf("smollm2-135m-instruct")
    except ConfigError as err:
        pytest.fail(f"{err.reason}\n(`make test` installs it)")


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf: Path) -> Path:
    """SmolLM2-135M-Instruct as an ordinary HF folder (converted once into the cache)."""
    return converted_folder(smollm2_gguf)
