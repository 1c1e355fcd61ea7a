"""A small stand-in for the ComfyUI modules the pack imports, so node tests run without ComfyUI.

This is a fake on purpose: ComfyUI itself is too large to install in CI. It provides only the names
the pack uses (folder_paths, comfy.utils.ProgressBar, comfy.model_management, server.PromptServer),
with the same behaviour for what we rely on (ProgressBar.update checks for cancel). The real ComfyUI
run is documented in docs/development.md (../shared/tools/comfy_harness.py).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class InterruptProcessingException(Exception):
    pass


class _State:
    interrupt = False
    progress: list = []
    unloaded = 0


STATE = _State()


def _make_modules(base: Path) -> dict[str, types.ModuleType]:
    fp = types.ModuleType("folder_paths")
    fp.base_path = str(base)
    fp.models_dir = str(base / "models")
    fp.folder_names_and_paths = {
        "checkpoints": ([str(base / "models" / "checkpoints")], {".safetensors", ".ckpt"}),
        "loras": ([str(base / "models" / "loras")], {".safetensors"}),
    }
    fp.get_user_directory = lambda: str(base / "user")
    fp.get_input_directory = lambda: str(base / "input")
    fp.get_output_directory = lambda: str(base / "output")
    fp.get_temp_directory = lambda: str(base / "temp")

    def get_folder_paths(name):
        return list(fp.folder_names_and_paths[name][0])

    def get_filename_list(name):
        out = []
        for folder in get_folder_paths(name):
            if os.path.isdir(folder):
                for root, _dirs, files in os.walk(folder):
                    for f in files:
                        out.append(os.path.relpath(os.path.join(root, f), folder))
        return sorted(out)

    def get_full_path(name, filename):
        for folder in get_folder_paths(name):
            p = os.path.join(folder, filename)
            if os.path.isfile(p):
                return p
        return None

    def get_annotated_filepath(name):
        return os.path.join(fp.get_input_directory(), name)

    fp.get_folder_paths = get_folder_paths
    fp.get_filename_list = get_filename_list
    fp.get_full_path = get_full_path
    fp.get_annotated_filepath = get_annotated_filepath

    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    utils = types.ModuleType("comfy.utils")
    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = InterruptProcessingException

    def throw_exception_if_processing_interrupted():
        if STATE.interrupt:
            STATE.interrupt = False
            raise InterruptProcessingException()

    def unload_all_models():
        STATE.unloaded += 1

    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    mm.processing_interrupted = lambda: STATE.interrupt
    mm.interrupt_current_processing = lambda value=True: setattr(STATE, "interrupt", value)
    mm.unload_all_models = unload_all_models
    mm.soft_empty_cache = lambda *a, **k: None
    mm.free_memory = lambda *a, **k: None
    mm.get_torch_device = lambda: __import__("torch").device("cpu")
    mm.intermediate_device = lambda: __import__("torch").device("cpu")

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total
            self.current = 0

        def update_absolute(self, value, total=None, preview=None):
            throw_exception_if_processing_interrupted()
            if total is not None:
                self.total = total
            self.current = value
            STATE.progress.append((self.current, self.total))

        def update(self, value):
            self.update_absolute(self.current + value)

    utils.ProgressBar = ProgressBar
    comfy.utils = utils
    comfy.model_management = mm

    server = types.ModuleType("server")

    class PromptServer:
        instance = None

    server.PromptServer = PromptServer
    return {
        "folder_paths": fp,
        "comfy": comfy,
        "comfy.utils": utils,
        "comfy.model_management": mm,
        "server": server,
    }


def install(base: Path, routes=None) -> dict[str, types.ModuleType]:
    """Put the stand-in modules into sys.modules. `routes` (an aiohttp RouteTableDef) becomes
    PromptServer.instance.routes, as in a running ComfyUI."""
    for sub in ("models/checkpoints", "models/loras", "user", "input", "output", "temp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    modules = _make_modules(base)
    if routes is not None:
        modules["server"].PromptServer.instance = types.SimpleNamespace(routes=routes)
    sys.modules.update(modules)
    STATE.interrupt = False
    STATE.progress = []
    STATE.unloaded = 0
    return modules


def uninstall() -> None:
    for name in ("folder_paths", "comfy", "comfy.utils", "comfy.model_management", "server"):
        sys.modules.pop(name, None)


def load_pack(name: str = "ComfyUI-TagLoom"):
    """Import the repository as ComfyUI does: a package named after its folder, hyphen included."""
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]
    spec = importlib.util.spec_from_file_location(
        name, REPO / "__init__.py", submodule_search_locations=[str(REPO)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
