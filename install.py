"""Install TagLoom's requirements for the host that runs this file (docs/install.md).

- ComfyUI-Manager installs requirements.txt line by line, then runs ``python install.py`` with
  ComfyUI's Python. Run by hand the same way: ``python install.py`` (``--dry-run`` prints the plan).
- The A1111/Forge WebUI never reads requirements.txt; it runs install.py at every launch with the
  WebUI on PYTHONPATH (its ``launch`` module tells us we are there).

Rules: a launch never waits on pip's resolver (each install is resolved alone with a time limit,
then installed exactly as resolved; 100 s in all per launch, ``TAGLOOM_INSTALL_TIMEOUT``); wheels
only; idempotent and quick when everything is present (only package metadata is read: no torch
import, no network); never installs, upgrades or downgrades torch/torchvision/torchaudio/xformers
(without torch, the torch-only packages are skipped); every installed package is pinned, so TagLoom
only adds packages; each host gets what it uses (the WebUI leaves chromadb and the trainers'
packages out: HOST_SKIPS); on CUDA hosts onnxruntime-gpu instead of onnxruntime, and because both
packages write the same ``onnxruntime/`` folder (the last install wins silently), a GPU host whose
ONNX Runtime lost its CUDA provider gets ``--force-reinstall --no-deps onnxruntime-gpu``.
``onnxruntime`` is never uninstalled (that would delete the shared files). What cannot be added is
reported in one line, its features stay off, and it is not retried at the next launch until the
environment changes (``--retry`` forces it).
Environment: TAGLOOM_INSTALL_DRY_RUN=1 = --dry-run; TAGLOOM_INSTALL_CUDA=0/1 forces the host kind;
TAGLOOM_INSTALL_HOST=webui|comfyui|plain the host; TAGLOOM_INSTALL_REQUIREMENTS /
TAGLOOM_INSTALL_STATE override the requirements and state files; TAGLOOM_INSTALL_PIP_ARGS adds pip
options (a local index in the tests).
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "xformers", "triton"}
NEEDS_TORCH = {"timm", "torchvision", "diffusers", "peft", "accelerate"}
ORT_CPU, ORT_GPU = "onnxruntime", "onnxruntime-gpu"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(path: str) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                out.append(line)
    return out


def req_name(req: str) -> str:
    return canonical(re.split(r"[\s\[<>=!~;@]", req, maxsplit=1)[0])


def installed_versions() -> dict[str, str]:
    out = {}
    for dist in md.distributions():
        name = dist.metadata.get("Name")
        if name:
            out[canonical(name)] = dist.version
    return out


def satisfied(req: str, installed: dict[str, str]) -> bool:
    """Installed at a version the requirement accepts, or not meant for this Python at all (a
    marker such as ``python_version < "3.11"`` that does not hold here)."""
    name = req_name(req)
    try:
        from packaging.requirements import Requirement
    except ImportError:  # no packaging: presence is all we can check
        return name in installed or ";" in req
    try:
        r = Requirement(req)
    except Exception:
        return name in installed
    if r.marker is not None and not r.marker.evaluate():
        return True
    if name not in installed:
        return False
    return not r.specifier or r.specifier.contains(installed[name], prereleases=True)


def nvidia_driver() -> bool:
    if shutil.which("nvidia-smi") or os.path.exists("/proc/driver/nvidia/version"):
        return True
    windir = os.environ.get("SystemRoot") or os.environ.get("WINDIR")
    return bool(windir) and os.path.exists(os.path.join(windir, "System32", "nvcuda.dll"))


def cuda_host(installed: dict[str, str]) -> bool:
    """A CUDA host: an NVIDIA driver is present and torch (if installed) is not a CPU/ROCm build.

    Only files and metadata are read; importing torch here would cost seconds at every WebUI launch.
    """
    forced = os.environ.get("TAGLOOM_INSTALL_CUDA")
    if forced in ("0", "1"):
        return forced == "1"
    if sys.platform == "darwin" or not nvidia_driver():
        return False
    torch_version = installed.get("torch", "")
    return not ("+cpu" in torch_version or "+rocm" in torch_version)


def ort_has_cuda() -> bool:
    """Whether the importable onnxruntime (whichever wheel wrote it last) has the CUDA provider.

    Read from the files, not by importing onnxruntime (quick, and no CUDA libraries loaded)."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return False
    capi = os.path.join(list(spec.submodule_search_locations)[0], "capi")
    try:
        return any("providers_cuda" in f for f in os.listdir(capi))
    except OSError:
        return False


# What each host leaves out on purpose, with the reason printed to its console. The WebUI pins an
# old gradio/pydantic/protobuf stack: chromadb cannot be added there without moving them (and pip can
# spend many minutes proving it), and the numpy store serves semantic search instead; training runs
# from ComfyUI's Train node or the command line, never inside the WebUI.
HOST_SKIPS = {
    "webui": {
        "chromadb": "semantic search uses TagLoom's numpy store in the WebUI",
        "diffusers": "training runs in ComfyUI or the tagloom CLI",
        "peft": "training runs in ComfyUI or the tagloom CLI",
        "accelerate": "training runs in ComfyUI or the tagloom CLI",
    },
    "comfyui": {},
    "plain": {},
}


def detect_host() -> str:
    """``webui`` when the WebUI's installer runs us, ``comfyui`` for a pack under
    ``ComfyUI/custom_nodes``, else ``plain``. TAGLOOM_INSTALL_HOST overrides."""
    forced = os.environ.get("TAGLOOM_INSTALL_HOST")
    if forced in HOST_SKIPS:
        return forced
    if webui_launch() is not None:
        return "webui"
    parent = os.path.dirname(HERE)
    if os.path.basename(parent) == "custom_nodes" and os.path.exists(os.path.join(os.path.dirname(parent), "folder_paths.py")):
        return "comfyui"
    return "plain"


def skipped_for_host(requirements: list[str], installed: dict[str, str], host: str) -> dict[str, str]:
    """Requirements this host leaves out (not installed), name -> reason."""
    skips = HOST_SKIPS.get(host, {})
    return {req_name(r): skips[req_name(r)] for r in requirements
            if req_name(r) in skips and not satisfied(r, installed)}


def plan(requirements: list[str], installed: dict[str, str], cuda: bool, ort_cuda: bool,
         host: str = "plain") -> list[list[str]]:
    """The pip invocations (argument lists after ``pip``) needed; [] when everything is present."""
    has_torch = "torch" in installed
    host_skips = HOST_SKIPS.get(host, {})
    missing = []
    for req in requirements:
        name = req_name(req)
        if name in TORCH_FAMILY:
            continue  # ComfyUI / the WebUI own torch
        if name in NEEDS_TORCH and not has_torch:
            continue  # would pull a multi-GB torch; the ONNX backend works without it
        if name == ORT_CPU and cuda:
            continue  # replaced by onnxruntime-gpu below
        if name in host_skips:
            continue  # this host leaves it out (HOST_SKIPS says why)
        if not satisfied(req, installed):
            missing.append(req)
    steps: list[list[str]] = []
    if missing:
        steps.append(["install", *missing])
    if cuda:
        if ORT_GPU not in installed:
            # Last step on purpose: its files then win over an onnxruntime (CPU) installed before.
            steps.append(["install", ORT_GPU])
        elif not ort_cuda or any(req_name(r) == "chromadb" for r in missing):
            # onnxruntime (CPU) was written over onnxruntime-gpu's files (e.g. by chromadb): restore.
            steps.append(["install", "--force-reinstall", "--no-deps", f"{ORT_GPU}=={installed[ORT_GPU]}"])
    return steps


def host_constraints(installed: dict[str, str], installing: list[str]) -> list[str]:
    """Pin every installed package except the ones this step installs: TagLoom adds packages to
    the host's environment but never moves one the host already has. Measured on the A1111 WebUI
    1.10 venv: unconstrained, chromadb/ollama would upgrade pydantic 1.10 -> 2.x and protobuf
    3.20 -> 7.x under gradio 3.41 and break the WebUI; pinned, pip picks versions that fit or fails."""
    skip = {req_name(r) for r in installing}
    return [f"{name}=={version}" for name, version in sorted(installed.items()) if name not in skip]


def webui_launch():
    """The WebUI's launch module when we run under the WebUI's installer, else None."""
    if importlib.util.find_spec("launch") is None or importlib.util.find_spec("modules") is None:
        return None
    try:
        import launch  # noqa: F401  (the WebUI's; only importable with the WebUI on PYTHONPATH)
    except Exception:
        return None
    return launch if hasattr(launch, "run_pip") and hasattr(launch, "is_installed") else None


# pip may spend at most this long resolving at one launch, all attempts together (seconds). Past it,
# what is left is reported and skipped: a WebUI launch must never sit behind a resolver.
RESOLVE_BUDGET_S = float(os.environ.get("TAGLOOM_INSTALL_TIMEOUT") or 100)
# One resolution attempt of everything together, and of one package alone, at most (seconds).
RESOLVE_ALL_S, RESOLVE_ONE_S = min(60.0, RESOLVE_BUDGET_S), min(30.0, RESOLVE_BUDGET_S)
# Core packages: without them the main job (tagging with ONNX Runtime) cannot run, so their absence
# is the one failure that makes install.py exit 1. Anything else only switches a feature off.
CORE = {"numpy", "pillow", "huggingface-hub", "safetensors", ORT_CPU, ORT_GPU}


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


def pip_options() -> list[str]:
    """Options every pip call gets. Wheels only: no step may compile (a source build can take an
    hour on a small machine). ``INDEX_URL`` is honoured as the WebUI's own pip calls honour it;
    ``TAGLOOM_INSTALL_PIP_ARGS`` adds options (tests point pip at a local index with it)."""
    opts = ["--disable-pip-version-check", "--only-binary=:all:"]
    if os.environ.get("INDEX_URL"):
        opts += ["--index-url", os.environ["INDEX_URL"]]
    return opts + shlex.split(os.environ.get("TAGLOOM_INSTALL_PIP_ARGS", ""))


def _last_error(text: str) -> str:
    if "ResolutionImpossible" in text or "conflicting dependencies" in text:
        return "it needs other versions of packages this host pinned"
    if "No matching distribution" in text:
        return "no wheel of it for this Python and platform"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("WARNING")]
    errors = [ln for ln in lines if ln.startswith("ERROR")] or lines
    return (errors[-1] if errors else "pip failed")[:200]


def resolve(names: list[str], constraints: str | None, timeout: float) -> tuple[list[str] | None, str]:
    """pip's resolution alone (``install --dry-run --report``), stopped after ``timeout`` s. Returns
    the exact ``name==version`` list to install, or None and why. Resolving apart from installing
    means a stopped resolver leaves the environment untouched."""
    if timeout <= 1:
        return None, "not tried: the install time budget was spent"
    fd, report = tempfile.mkstemp(suffix="-tagloom-pip-report.json")
    os.close(fd)
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", report, *pip_options()]
    if constraints:
        cmd += ["-c", constraints]
    try:
        proc = subprocess.run(cmd + names, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            return None, _last_error(proc.stderr + proc.stdout)
        with open(report, encoding="utf-8") as f:
            items = json.load(f).get("install", [])
        return [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items], ""
    except subprocess.TimeoutExpired:
        return None, f"pip was still resolving after {timeout:.0f} s"
    except (OSError, ValueError, KeyError) as e:
        return None, f"pip's report could not be read ({e})"
    finally:
        os.unlink(report)


def pip_install(args: list[str]) -> str:
    """Run one ``pip install`` that needs no resolution; '' on success, else why it failed."""
    proc = subprocess.run([sys.executable, "-m", "pip", *args, *pip_options()], capture_output=True, text=True)
    return "" if proc.returncode == 0 else _last_error(proc.stderr + proc.stdout)


def _install_resolved(names: list[str], installed: dict[str, str], budget: Budget, timeout: float) -> tuple[bool, str]:
    """Resolve ``names`` against every installed package pinned, then install exactly that set."""
    pins = host_constraints(installed, names)
    cfile = None
    try:
        if pins:
            with tempfile.NamedTemporaryFile("w", suffix="-tagloom-constraints.txt", delete=False) as cf:
                cf.write("\n".join(pins) + "\n")
                cfile = cf.name
        items, why = resolve(names, cfile, min(timeout, budget.left()))
    finally:
        if cfile:
            os.unlink(cfile)
    if items is None:
        return False, why
    moved = [i for i in items if req_name(i) in installed]
    if moved:  # the pins should make this impossible; never move a host package regardless
        return False, "would change " + ", ".join(moved)
    if items:
        why = pip_install(["install", "--no-deps", *items])
        if why:
            return False, why
    return True, ""


def run_steps(steps: list[list[str]], installed: dict[str, str], dry_run: bool,
              failed: dict | None = None, budget: Budget | None = None) -> int:
    """Run the plan. Each step is resolved first (bounded: RESOLVE_* above) and installed only as
    resolved, with every installed package pinned, so TagLoom only adds packages. A step that does
    not resolve is retried package by package; what still does not fit (or is left when the budget
    is spent) is reported with its reason in ``failed`` and skipped. Returns 0, or 1 when a core
    package is missing afterwards."""
    if not steps:
        print("TagLoom: requirements already satisfied")
        return 0
    failed = {} if failed is None else failed
    budget = budget or Budget(RESOLVE_BUDGET_S)
    for args in steps:
        names = [a for a in args[1:] if not a.startswith("-")]
        if dry_run:
            pins = "" if "--no-deps" in args else f"   (constraints: the {len(installed)} installed packages, torch family included, kept as they are)"
            print(f"TagLoom (dry run) would run: pip {' '.join(shlex.quote(a) for a in args)}{pins}")
            continue
        print(f"TagLoom: installing {' '.join(names)}", flush=True)
        if "--no-deps" in args:  # a repair of files, nothing to resolve
            why = pip_install(list(args))
            if why:
                failed.update({req_name(n): why for n in names})
            continue
        ok, together = _install_resolved(names, installed, budget, RESOLVE_ALL_S)
        if ok:
            installed = installed_versions()
            continue
        if len(names) == 1:
            failed[req_name(names[0])] = together
            continue
        for name in names:  # together did not fit: each alone, against what is installed by now
            ok, why = _install_resolved([name], installed, budget, RESOLVE_ONE_S)
            if ok:
                installed = installed_versions()
            elif why.startswith("not tried"):
                failed[req_name(name)] = f"{together}; alone {why}"
            else:
                failed[req_name(name)] = why
    if dry_run:
        return 0
    return 1 if any(n in CORE for n in failed) else 0


def summary_line(installed_now: list[str], left_out: dict[str, str], seconds: float | None) -> str:
    """The one console line a launch prints: what was added, what was left out and why, how to add it."""
    parts = []
    if installed_now:
        took = f" in {seconds:.0f} s" if seconds is not None else ""
        parts.append(f"installed {len(installed_now)} package(s){took}")
    if left_out:
        parts.append("left out " + "; ".join(f"{n} ({why})" for n, why in sorted(left_out.items())))
        parts.append(f"to add one: {shlex.quote(sys.executable)} -m pip install NAME (it may move packages this "
                     "host pinned), or python install.py --retry")
    return "TagLoom: " + ("; ".join(parts) if parts else "requirements already satisfied")


def state_path() -> str:
    """Where we remember what could not be installed (inside the environment we install into, so
    each Python environment has its own; outside the repository)."""
    return os.environ.get("TAGLOOM_INSTALL_STATE") or os.path.join(sys.prefix, ".tagloom-install-state.json")


def state_key(requirements: list[str], installed: dict[str, str], cuda: bool) -> str:
    import hashlib

    blob = json.dumps([requirements, sorted(installed.items()), cuda])
    return hashlib.sha256(blob.encode()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    dry_run = "--dry-run" in argv or os.environ.get("TAGLOOM_INSTALL_DRY_RUN") == "1"
    req_file = os.environ.get("TAGLOOM_INSTALL_REQUIREMENTS") or os.path.join(HERE, "requirements.txt")
    requirements = read_requirements(req_file)
    installed = installed_versions()
    cuda = cuda_host(installed)
    host = detect_host()
    if "torch" not in installed:
        print("TagLoom: torch is not installed; the torch backend and training stay unavailable "
              "(ComfyUI and the WebUI bring torch; TagLoom never installs it)")
    host_left_out = skipped_for_host(requirements, installed, host)
    steps = plan(requirements, installed, cuda, ort_has_cuda(), host)
    if not steps:
        print(summary_line([], host_left_out, None))
        return 0
    key = state_key(requirements, installed, cuda)
    try:
        with open(state_path(), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        state = {}
    if state.get("key") == key and not dry_run and "--retry" not in argv:
        # Nothing changed since the last attempt: do not resolve again at every WebUI launch.
        failed = state.get("failed", {})
        failed = failed if isinstance(failed, dict) else {n: "could not be installed" for n in failed}
        print(f"TagLoom: not retrying {', '.join(sorted(failed))} (left out last time; nothing changed since). "
              + summary_line([], {**host_left_out, **failed}, None)[len("TagLoom: "):])
        return 1 if any(n in CORE for n in failed) else 0
    t0 = time.monotonic()
    failed: dict[str, str] = {}
    rc = run_steps(steps, installed, dry_run, failed)
    if dry_run:
        return rc
    after = installed_versions()
    added = sorted(n for n in after if after.get(n) != installed.get(n))
    print(summary_line(added, {**host_left_out, **failed}, time.monotonic() - t0))
    try:
        if failed:
            with open(state_path(), "w", encoding="utf-8") as f:
                json.dump({"key": state_key(requirements, after, cuda), "failed": failed, "host": host}, f)
        elif os.path.exists(state_path()):
            os.unlink(state_path())
    except OSError:
        pass
    return rc


if __name__ == "__main__":
    sys.exit(main())
