"""Shared fixtures: an isolated TAGLOOM_HOME per test, the ComfyUI stand-in, tiny models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def tagloom_home(tmp_path, monkeypatch):
    """Every test gets its own TAGLOOM_HOME: nothing leaks between tests or into the user's home."""
    home = tmp_path / "tagloom_home"
    monkeypatch.setenv("TAGLOOM_HOME", str(home))
    return home


@pytest.fixture
def comfy(tmp_path):
    """The ComfyUI stand-in modules (tests/comfy_stub.py), removed again after the test."""
    import comfy_stub

    modules = comfy_stub.install(tmp_path / "comfyui")
    yield modules
    comfy_stub.uninstall()


@pytest.fixture
def comfy_pack(comfy):
    """The pack imported the way ComfyUI imports a custom node folder."""
    import comfy_stub

    return comfy_stub.load_pack()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = SHARED / "data"
    if not (path / "danbooru.csv").is_file():
        pytest.skip(f"shared data not found at {path} (../shared/ beside the repository)")
    return path
