"""Install TagLoom's requirements for the host that runs this file.

- ComfyUI-Manager installs requirements.txt line by line, then runs ``python install.py`` with
  ComfyUI's Python. Run by hand the same way: ``python install.py`` (``--dry-run`` prints the plan).
- The A1111/Forge WebUI never reads requirements.txt; it runs install.py at every launch with the
  WebUI on PYTHONPATH, and its ``launch`` module's ``run_pip`` is the sanctioned way to install.

Rules: idempotent and quick when everything is present (only package metadata is read: no torch
import, no network); never installs, upgrades or downgrades torch/torchvision/torchaudio/xformers
(without torch, the torch-only packages are skipped); on CUDA hosts onnxruntime-gpu instead of onnxruntime, and because
both packages write the same ``onnxruntime/`` folder (the last install wins silently), a GPU host
whose ONNX Runtime lost its CUDA provider gets ``--force-reinstall --no-deps onnxruntime-gpu``.
``onnxruntime`` is never uninstalled (that would delete the shared files).
Packages the environment already has are never moved: each pip call pins every installed package
(not only torch) as a constraint, so TagLoom only adds packages. A requirement that cannot be added
that way is reported, its TagLoom features stay off, and it is not retried at the next launch until
the environment changes (``--retry`` forces it).
Environment: TAGLOOM_INSTALL_DRY_RUN=1 = --dry-run; TAGLOOM_INSTALL_CUDA=0/1 forces the host kind;
TAGLOOM_INSTALL_REQUIREMENTS / TAGLOOM_INSTALL_STATE override the requirements and state files.
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
    name = req_name(req)
    if name not in installed:
        return False
    try:
        from packaging.requirements import Requirement
    except ImportError:  # no packaging: presence is all we can check
        return True
    try:
        r = Requirement(req)
    except Exception:
        return True
    if r.marker is not None and not r.marker.evaluate():
        return True
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


def plan(requirements: list[str], installed: dict[str, str], cuda: bool, ort_cuda: bool) -> list[list[str]]:
    """The pip invocations (argument lists after ``pip``) needed; [] when everything is present."""
    has_torch = "torch" in installed
    missing = []
    for req in requirements:
        name = req_name(req)
        if name in TORCH_FAMILY:
            continue  # ComfyUI / the WebUI own torch
        if name in NEEDS_TORCH and not has_torch:
            continue  # would pull a multi-GB torch; the ONNX backend works without it
        if name == ORT_CPU and cuda:
            continue  # replaced by onnxruntime-gpu below
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


def _pip(launch, args: list[str]) -> bool:
    try:
        if launch is not None:
            launch.run_pip(" ".join(shlex.quote(a) for a in args), "TagLoom requirements")
        else:
            subprocess.check_call([sys.executable, "-m", "pip", *args])
        return True
    except (subprocess.CalledProcessError, RuntimeError) as e:  # run_pip raises RuntimeError
        print(f"TagLoom: pip failed: {str(e).strip().splitlines()[0] if str(e).strip() else e}")
        return False


def run_steps(steps: list[list[str]], installed: dict[str, str], dry_run: bool, failed: list | None = None) -> int:
    """Run the plan. A step that cannot be satisfied without moving the host's packages is retried
    package by package; what still does not fit is reported (its features stay off) and the rest
    is installed. Returns 0, or 1 when something could not be installed."""
    if not steps:
        print("TagLoom: requirements already satisfied")
        return 0
    launch = webui_launch()
    failed = [] if failed is None else failed
    for args in steps:
        no_deps = "--no-deps" in args
        names = [a for a in args[1:] if not a.startswith("-")]
        pins = [] if no_deps else host_constraints(installed, names)
        shown = "pip " + " ".join(shlex.quote(a) for a in args)
        if pins:
            shown += f"   (constraints: the {len(pins)} installed packages, torch family included, kept as they are)"
        if dry_run:
            print(f"TagLoom (dry run) would run: {shown}")
            continue
        print(f"TagLoom: {shown}")
        cfile = None
        try:
            extra: list[str] = []
            if pins:
                cfile = tempfile.NamedTemporaryFile("w", suffix="-tagloom-constraints.txt", delete=False)
                cfile.write("\n".join(pins) + "\n")
                cfile.close()
                extra = ["-c", cfile.name]
            if _pip(launch, list(args) + extra):
                continue
            if len(names) > 1:
                for name in names:
                    if not _pip(launch, ["install", name, *extra]):
                        failed.append(name)
            else:
                failed.extend(names)
        finally:
            if cfile:
                os.unlink(cfile.name)
    if failed:
        print("TagLoom: could not install " + ", ".join(failed) + " without changing packages this "
              "environment already has; the TagLoom features that need them stay unavailable "
              "(see docs/install.md)")
        return 1
    return 0


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
    if "torch" not in installed:
        print("TagLoom: torch is not installed; the torch backend and training stay unavailable "
              "(ComfyUI and the WebUI bring torch; TagLoom never installs it)")
    steps = plan(requirements, installed, cuda, ort_has_cuda())
    if not steps:
        print("TagLoom: requirements already satisfied")
        return 0
    key = state_key(requirements, installed, cuda)
    try:
        with open(state_path(), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        state = {}
    if state.get("key") == key and not dry_run and "--retry" not in argv:
        # Nothing changed since a failed attempt: do not re-resolve at every WebUI launch.
        print("TagLoom: not retrying " + ", ".join(state.get("failed", [])) + " (could not be installed last "
              "time without changing this environment's packages; run install.py --retry to try again)")
        return 0
    rc = run_steps(steps, installed, dry_run, failed_out := [])
    if not dry_run:
        try:
            if failed_out:
                with open(state_path(), "w", encoding="utf-8") as f:
                    json.dump({"key": state_key(requirements, installed_versions(), cuda), "failed": failed_out}, f)
            elif os.path.exists(state_path()):
                os.unlink(state_path())
        except OSError:
            pass
    return rc


if __name__ == "__main__":
    sys.exit(main())
