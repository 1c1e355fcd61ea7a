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


# .ci/check-pythons runs the suite on other Pythons in venvs without torch (a CUDA torch is several
# GB per Python). There, and only there (it sets TAGLOOM_SKIP_MISSING_OPTIONAL=1), a test that fails
# because one of these optional packages is missing is reported as skipped, naming the package and
# where it was imported; in the dev venv and CI's main run every such failure stays a failure.
OPTIONAL_PACKAGES = {"torch", "torchvision", "timm", "diffusers", "peft", "accelerate", "playwright", "ray",
                     "transformers", "sentence_transformers", "onnxscript"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if os.environ.get("TAGLOOM_SKIP_MISSING_OPTIONAL") != "1" or call.excinfo is None:
        return
    err = call.excinfo.value
    if isinstance(err, ModuleNotFoundError) and (err.name or "").split(".")[0] in OPTIONAL_PACKAGES:
        report = outcome.get_result()
        entry = call.excinfo.traceback[-1]
        report.outcome = "skipped"
        report.longrepr = (str(entry.path), entry.lineno + 1, f"needs {err.name} (not in this Python's check venv)")
