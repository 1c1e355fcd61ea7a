"""install.py: the plan for each host, dry runs, and the WebUI path (nothing is installed: the plan is
a pure function, and the WebUI's `launch` module is replaced by a recorder, as the WebUI itself is not
installed in CI)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

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
        assert " torch" not in line.split("(constraint")[0]


def test_webui_host_uses_launch_run_pip(tmp_path):
    # A stand-in for the WebUI's launch module that records run_pip calls instead of installing.
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "__init__.py").write_text("")
    log = tmp_path / "calls.jsonl"
    (tmp_path / "launch.py").write_text(
        "import json\n"
        "def is_installed(name):\n    return True\n"
        f"def run_pip(command, desc=None):\n    open({str(log)!r}, 'a').write(json.dumps([command, desc]) + '\\n')\n"
    )
    out = subprocess.run([sys.executable, str(REPO / "install.py")], capture_output=True, text=True, cwd=tmp_path,
                         env=_env(PYTHONPATH=str(tmp_path), TAGLOOM_INSTALL_CUDA="1"), timeout=60)
    assert out.returncode == 0, out.stderr
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    assert calls, out.stdout
    assert all(c[0].startswith("install") and (" -c " in c[0] or "--no-deps" in c[0]) for c in calls)
    assert any("onnxruntime-gpu" in c[0] for c in calls)


def _fake_webui(tmp_path, fail_on=()):
    """A stand-in for the WebUI's launch module: run_pip records the call, and raises (as the real
    one does when pip fails) for commands naming a package in ``fail_on``."""
    (tmp_path / "modules").mkdir(exist_ok=True)
    (tmp_path / "modules" / "__init__.py").write_text("")
    log = tmp_path / "calls.jsonl"
    (tmp_path / "launch.py").write_text(
        "import json\n"
        "def is_installed(name):\n    return True\n"
        "def run_pip(command, desc=None):\n"
        f"    open({str(log)!r}, 'a').write(json.dumps(command) + '\\n')\n"
        f"    if any(p in command.split() for p in {list(fail_on)!r}):\n"
        "        raise RuntimeError('ResolutionImpossible')\n"
    )
    return log


def test_a_package_that_does_not_fit_is_reported_and_not_retried_every_launch(tmp_path):
    log = _fake_webui(tmp_path, fail_on=["tagloom-test-pkg-b"])
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("numpy\ntagloom-test-pkg-a\ntagloom-test-pkg-b\n")
    env = _env(PYTHONPATH=str(tmp_path), TAGLOOM_INSTALL_CUDA="0", TAGLOOM_INSTALL_REQUIREMENTS=str(reqs),
               TAGLOOM_INSTALL_STATE=str(tmp_path / "state.json"))
    run = lambda *a: subprocess.run([sys.executable, str(REPO / "install.py"), *a], capture_output=True, text=True,
                                    cwd=tmp_path, env=env, timeout=60)
    out = run()
    assert out.returncode == 1
    assert "could not install tagloom-test-pkg-b" in out.stdout
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    # together first (fails), then one by one: a is installed, b reported
    assert calls[0].startswith("install tagloom-test-pkg-a tagloom-test-pkg-b -c ")
    assert calls[1].startswith("install tagloom-test-pkg-a -c ") and calls[2].startswith("install tagloom-test-pkg-b -c ")
    # the next launch, nothing changed: no pip at all, quick
    out2 = run()
    assert out2.returncode == 0 and "not retrying tagloom-test-pkg-b" in out2.stdout
    assert len(log.read_text().splitlines()) == 3
