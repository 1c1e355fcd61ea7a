"""scripts/tagloom.py as the WebUI loads it, serving /tagloom/autocomplete from a real FastAPI app
under a real uvicorn server on 127.0.0.1.

The WebUI itself (torch, gradio 3, its launcher) cannot run in CI, so its two modules that the script
touches — ``modules.script_callbacks`` and ``modules.shared`` — and ``gradio.Slider``/``Radio`` are small
stand-ins here (a fake, on purpose). What is real: FastAPI, uvicorn, the tag DB, and the way the WebUI
loads an extension script (by path, module name ``tagloom.py``, the extension folder on sys.path
only during the load, then its saved sys.path list put back — which is what broke a first version).
The real WebUI run is in docs/autocomplete.md (../shared/tools/webui_harness.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from autocomplete_fixtures import make_tag_db

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[1]

RUNNER = r"""
import importlib.util, json, os, sys, types
ext_root, port = sys.argv[1], int(sys.argv[2])
callbacks = {"app_started": [], "ui_settings": []}
options = {}
modules = types.ModuleType("modules"); modules.__path__ = []
sc = types.ModuleType("modules.script_callbacks")
sc.on_app_started = lambda f: callbacks["app_started"].append(f)
sc.on_ui_settings = lambda f: callbacks["ui_settings"].append(f)
shared = types.ModuleType("modules.shared")
class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, section=None, **kw):
        self.default, self.label, self.component_args, self.section = default, label, component_args, section
shared.OptionInfo = OptionInfo
shared.opts = types.SimpleNamespace(add_option=lambda k, info: options.__setitem__(k, info))
modules.script_callbacks, modules.shared = sc, shared
sys.modules.update({"modules": modules, "modules.script_callbacks": sc, "modules.shared": shared,
                    "gradio": types.SimpleNamespace(Slider="Slider", Radio="Radio")})
# modules/scripts.py load_scripts(): basedir on sys.path during the load, then the saved list back
saved = sys.path
sys.path = [ext_root] + saved
try:
    path = os.path.join(ext_root, "scripts", "tagloom.py")
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
finally:
    sys.path = saved
for f in callbacks["ui_settings"]:
    f()
from fastapi import FastAPI
import uvicorn
app = FastAPI()
for f in callbacks["app_started"]:
    f(None, app)
print(json.dumps({k: [v.default, v.section] for k, v in options.items()}), flush=True)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_webui_script_registers_route_and_settings(tmp_path, tagloom_home):
    pytest.importorskip("fastapi", reason="fastapi (requirements-dev.txt) is needed to serve the WebUI route")
    pytest.importorskip("uvicorn")
    make_tag_db()
    port = _free_port()
    env = {**os.environ, "TAGLOOM_HOME": str(tagloom_home), "PYTHONPATH": ""}
    # cwd elsewhere, no PYTHONPATH: `import tagloom` must work through what the script does (when
    # the package is also pip-installed, as `.ci/run` does with -e, this part cannot fail)
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(REPO), str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.poll() is not None else "no output"
        settings = json.loads(line)
        assert settings["tagloom_autocomplete_enabled"] == [True, ["tagloom", "TagLoom"]]
        assert set(settings) == {"tagloom_autocomplete_enabled", "tagloom_autocomplete_max_results",
                                 "tagloom_autocomplete_semantic", "tagloom_autocomplete_replace_underscores",
                                 "tagloom_autocomplete_escape_parentheses", "tagloom_autocomplete_conflict"}
        assert settings["tagloom_autocomplete_conflict"] == ["tagloom", ["tagloom", "TagLoom"]]
        base = f"http://127.0.0.1:{port}/tagloom/autocomplete"
        for _ in range(100):  # uvicorn binds a moment after the line above
            try:
                status, body = _get(f"{base}?q=kitsu&limit=3")
                break
            except (ConnectionError, urllib.error.URLError):
                time.sleep(0.1)
        assert status == 200
        assert body["suggestions"][0]["tag"] == "fox_girl" and body["suggestions"][0]["alias"] == "kitsune"
        assert _get(f"{base}?q=x&limit=abc")[0] == 400
        status, body = _get(f"{base}?q=twin&semantic=on")
        assert status == 200 and body["suggestions"][0]["tag"] == "twintails" and "warning" in body
    finally:
        proc.terminate()
        proc.wait(10)
