"""The pack's skeleton: imports without ComfyUI, loads like a ComfyUI custom node folder, CLI wiring."""

import subprocess
import sys

from tests_paths import REPO


def test_core_imports_without_comfyui():
    code = "import tagloom, tagloom.config, tagloom.cli; import sys; assert 'folder_paths' not in sys.modules; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_pack_loads_like_a_comfyui_custom_node(comfy_pack, comfy):
    assert isinstance(comfy_pack.NODE_CLASS_MAPPINGS, dict)
    assert comfy_pack.WEB_DIRECTORY == "./web"
    # The tagloom model folder is registered with folder_paths.
    assert "tagloom" in comfy["folder_paths"].folder_names_and_paths
    for key, cls in comfy_pack.NODE_CLASS_MAPPINGS.items():
        assert key.startswith("TagLoom"), key
        assert callable(getattr(cls, "INPUT_TYPES"))
        assert hasattr(cls, "RETURN_TYPES") and hasattr(cls, "FUNCTION")


def test_cli_module_and_help():
    out = subprocess.run([sys.executable, "-m", "tagloom", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "tagloom" in out.stdout


def test_paths_follow_tagloom_home(tagloom_home):
    from tagloom import config

    assert config.home() == tagloom_home
    assert config.models_dir() == tagloom_home / "models"
    assert config.data_dir() == tagloom_home


def test_paths_follow_comfyui_inside_comfyui(comfy):
    from tagloom import config

    fp = comfy["folder_paths"]
    assert str(config.models_dir()).startswith(fp.models_dir)
    assert str(config.data_dir()).startswith(fp.get_user_directory())


def test_cli_comfyui_option_points_at_comfyui_folders(tmp_path):
    root = tmp_path / "ComfyUI"
    (root / "models").mkdir(parents=True)
    code = "from tagloom import config; print(config.data_dir()); print(config.models_dir())"
    env = {**__import__("os").environ, "TAGLOOM_COMFYUI": str(root)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    data, models = out.stdout.split()
    assert data == str(root / "user" / "tagloom")
    assert models == str(root / "models" / "tagloom")
    bad = subprocess.run([sys.executable, "-m", "tagloom", "--comfyui", str(tmp_path / "nope"), "tags", "stats"],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "not a ComfyUI folder" in bad.stderr


def test_the_tests_run_in_a_checkout_named_like_the_pack(tmp_path):
    """`git clone .../ComfyUI-TagLoom` then `make test` (the README's path): the folder name is not a
    valid module name, and pytest imports the pack's root __init__.py on its own there. It must not
    fail (it once did: 'attempted relative import with no known parent package')."""
    import shutil

    copy = tmp_path / "ComfyUI-TagLoom"
    skip = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", "node_modules")
    shutil.copytree(REPO, copy, ignore=skip, symlinks=True)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_config.py"],
                         cwd=copy, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "passed" in out.stdout
