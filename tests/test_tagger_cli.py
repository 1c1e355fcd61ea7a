"""`tagloom tag` end to end on the tiny model (real CLI entry point, in-process for speed, plus one
run of `python -m tagloom` as a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from tagloom.cli import main
from tagger_helpers import tiny_model
from tests_paths import REPO


def _write_images(folder, n=2):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_json_output_one_object_per_image(tmp_path, capsys):
    paths = _write_images(tmp_path / "imgs")
    rc = main(["tag", str(tmp_path / "imgs"), "--model", str(tiny_model()), "--json", "--general-threshold", "0.2"])
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [d["file"] for d in lines] == [str(p) for p in paths]
    for d in lines:
        assert set(d) == {"file", "ratings", "general", "character", "artist", "caption", "tags"}
        assert all(v >= 0.2 for v in d["general"].values())
        assert list(d["general"].values()) == sorted(d["general"].values(), reverse=True)


def test_human_block_and_overrides(tmp_path, capsys):
    paths = _write_images(tmp_path / "imgs", 1)
    thr = tmp_path / "t.json"
    thr.write_text(json.dumps({"general": 0.99, "character": 0.01}))
    rc = main(["tag", str(paths[0]), "--model", str(tiny_model()), "--threshold-json", str(thr),
               "--general-threshold", "0.05", "--backend", "torch", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    for head in ("Caption:", "Tags:", "Ratings:", "Character tags:", "General tags:", "Artist tags:"):
        assert head in out
    general = out.split("General tags:")[1].split("Artist tags:")[0]
    assert general.count(":") >= 5  # flag 0.05 beats the file's 0.99
    character = out.split("Character tags:")[1].split("General tags:")[0]
    assert "(none)" not in character  # the file's 0.01 applies


def test_bad_image_is_reported_and_others_still_tagged(tmp_path, capsys):
    good = _write_images(tmp_path / "imgs", 1)[0]
    bad = tmp_path / "imgs" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0garbage")
    rc = main(["tag", str(good), str(bad), "--model", str(tiny_model()), "--json"])
    captured = capsys.readouterr()
    assert rc == 2
    assert str(bad) in captured.err
    assert [json.loads(x)["file"] for x in captured.out.splitlines()] == [str(good)]


def test_errors_without_traceback(tmp_path, capsys):
    assert main(["tag", str(tmp_path / "missing.png"), "--model", str(tiny_model())]) == 2
    assert "missing.png" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    img = _write_images(tmp_path / "i", 1)[0]
    assert main(["tag", str(img), "--model", str(tiny_model()), "--threshold-json", str(bad)]) == 2
    assert "bad.json" in capsys.readouterr().err


def test_python_dash_m(tmp_path):
    img = _write_images(tmp_path / "i", 1)[0]
    out = subprocess.run([sys.executable, "-m", "tagloom", "tag", str(img), "--model", str(tiny_model()), "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["file"] == str(img)
    assert "CPUExecutionProvider" in out.stderr  # the provider really used is reported
