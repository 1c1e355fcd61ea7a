"""`tagloom caption` and the caption folder node: outputs, bad images, resume, cancel, allowed folders.

Everything real: a tiny EVA-02 exported to ONNX (tests/tiny_models.py), real image files, ONNX
Runtime, the real CLI entry point; a subprocess killed with SIGKILL for the resume test. Only ComfyUI
itself is the stand-in (tests/comfy_stub.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caption_helpers import make_awkward_images, make_good_images, reference_results, tiny_model
from tagloom.caption import CaptionJob, ModelChoice, Progress, run_caption
from tagloom.cli import main

REPO = Path(__file__).resolve().parents[1]


def cli(*args) -> int:
    return main(["caption", *map(str, args)])


def test_txt_beside_each_image_with_bad_images_reported(tmp_path, capsys):
    model = tiny_model()
    good = make_good_images(tmp_path / "ds", 5)
    sub = make_good_images(tmp_path / "ds" / "sub", 2, seed=3)
    awkward = make_awkward_images(tmp_path / "ds")
    rc = cli(tmp_path / "ds", "--model", model, "--recursive", "--batch-size", 3)
    err = capsys.readouterr().err
    assert rc == 1  # some images failed; everything else is written
    ok = good + sub + [awkward[k] for k in ("cmyk", "png16", "rgba", "palette", "animated", "webp")]
    ref = reference_results(model, ok, tmp_path / "ds")
    for img in ok:
        rel = img.relative_to(tmp_path / "ds").as_posix()
        assert img.with_suffix(".txt").read_text(encoding="utf-8") == ref[rel]["tags"], rel
    for bad in ("truncated", "not_image"):
        assert not awkward[bad].with_suffix(".txt").exists()
    assert "done 13, skipped 0" in err and "failed 2 of 15" in err
    assert "failed: truncated.jpg: is truncated or corrupt" in err
    assert "failed: notes.png: is not an image" in err
    assert "img/s" in err  # the progress bar (images/s and ETA)
    assert not list((tmp_path / "ds").glob(".*.tmp"))  # no temporary files left behind
    umask = os.umask(0)
    os.umask(umask)
    assert good[0].with_suffix(".txt").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_skip_existing_is_default_and_overwrite_replaces(tmp_path, capsys):
    model = tiny_model()
    imgs = make_good_images(tmp_path / "ds", 4)
    hand = imgs[0].with_suffix(".txt")
    hand.write_text("my hand-written caption")
    assert cli(tmp_path / "ds", "--model", model, "-q") == 0
    assert hand.read_text() == "my hand-written caption"
    assert "done 3, skipped 1" in capsys.readouterr().err
    assert cli(tmp_path / "ds", "--model", model, "-q", "--skip-existing") == 0
    assert "done 0, skipped 4" in capsys.readouterr().err
    assert cli(tmp_path / "ds", "--model", model, "-q", "--overwrite", "--text", "caption", "--include", "trigger_word") == 0
    assert "done 4, skipped 0" in capsys.readouterr().err
    assert hand.read_text().startswith("trigger word, ")
    with pytest.raises(SystemExit):  # argparse: the two modes exclude each other
        cli(tmp_path / "ds", "--overwrite", "--skip-existing")


def test_a_caption_that_cannot_be_written_fails_alone(tmp_path, capsys):
    """Captions of a batch are written by several threads; one that cannot be written (here a
    folder sits where the .txt goes) is a failure with the reason, the rest of the batch is written."""
    model = tiny_model()
    imgs = make_good_images(tmp_path / "ds", 6)
    blocked = imgs[2].with_suffix(".txt")
    blocked.mkdir()
    assert cli(tmp_path / "ds", "--model", model, "-q", "--overwrite", "--batch-size", 6) == 1
    err = capsys.readouterr().err
    assert "done 5, skipped 0 (caption already there), failed 1 of 6" in err
    assert f"failed: {imgs[2].name}: cannot write its caption:" in err
    assert all(p.with_suffix(".txt").is_file() for p in imgs if p != imgs[2])
    assert not [p.name for p in blocked.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary left


def test_json_beside_each_image_and_name_clash(tmp_path, capsys):
    from PIL import Image

    model = tiny_model()
    imgs = make_good_images(tmp_path / "ds", 2)
    Image.open(imgs[0]).save(imgs[0].with_suffix(".png"))  # img000.jpg and img000.png -> img000.json
    out = tmp_path / "summary.json"
    rc = cli(tmp_path / "ds", "--model", model, "-q", "--format", "json", "--general-threshold", "0.2",
             "--summary-json", out)
    assert rc == 1
    data = json.loads(imgs[1].with_suffix(".json").read_text(encoding="utf-8"))
    assert set(data) == {"file", "ratings", "general", "character", "artist", "caption", "tags"}
    assert data["file"] == "img001.jpg"
    assert min(data["general"].values(), default=1) >= 0.2
    summary = json.loads(out.read_text())
    assert summary["done"] == 2
    assert [f["file"] for f in summary["failed"]] == ["img000.png"]
    assert "belongs to img000.jpg" in summary["failed"][0]["reason"]


def test_jsonl_resumes_after_sigkill(tmp_path):
    model = tiny_model()
    imgs = make_good_images(tmp_path / "ds", 40, sizes=((400, 300), (300, 400)))
    out = tmp_path / "all.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "tagloom", "caption", str(tmp_path / "ds"), "--model", str(model), "--format", "jsonl",
           "-o", str(out), "--batch-size", "1", "--workers", "1", "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = out.read_bytes()
    # A kill can land mid-line; make sure the torn-line case is exercised whatever the timing.
    with open(out, "ab") as f:
        f.write(b'{"file": "img039.jpg", "ratings": {"gen')
    first = before.splitlines()
    assert cli(tmp_path / "ds", "--model", model, "--format", "jsonl", "-o", out, "-q") == 0
    lines = out.read_bytes().splitlines()
    assert lines[: len(first)] == first  # what was written before the kill is kept, not redone
    files = [json.loads(line)["file"] for line in lines]
    assert sorted(files) == sorted(p.name for p in imgs)  # every image exactly once
    ref = reference_results(model, imgs[-3:], tmp_path / "ds")
    by_file = {json.loads(line)["file"]: json.loads(line) for line in lines}
    for name, expected in ref.items():
        assert by_file[name]["tags"] == expected["tags"]


def test_interrupted_overwrite_resumes_without_redoing(tmp_path):
    model = tiny_model()
    imgs = make_good_images(tmp_path / "ds", 6)
    for img in imgs:
        img.with_suffix(".txt").write_text("old caption")
        os.utime(img.with_suffix(".txt"), (time.time() - 1000, time.time() - 1000))

    class CancelAfterFirstBatch(Progress):
        calls = 0

        def check(self):
            from tagloom.errors import CancelledError

            self.calls += 1
            if self.calls > 1:
                raise CancelledError("stopped by the test")

    job = CaptionJob(tmp_path / "ds", ModelChoice(model=str(model)), overwrite=True, batch_size=2, workers=1)
    with pytest.raises(Exception, match="stopped by the test"):
        run_caption(job, CancelAfterFirstBatch())
    written = [i for i in imgs if i.with_suffix(".txt").read_text() != "old caption"]
    assert 0 < len(written) < len(imgs)
    stamps = {i: i.with_suffix(".txt").stat().st_mtime_ns for i in written}
    summary = run_caption(job)  # the same overwrite job again: resumes
    assert summary.resumed and summary.skipped == len(written) and summary.done == len(imgs) - len(written)
    assert all(i.with_suffix(".txt").stat().st_mtime_ns == stamps[i] for i in written)  # not redone
    assert all(i.with_suffix(".txt").read_text() != "old caption" for i in imgs)
    again = run_caption(job)  # the job finished: a new --overwrite starts over
    assert again.done == len(imgs) and not again.resumed


def test_job_level_errors_are_clear(tmp_path, capsys):
    assert cli(tmp_path / "missing", "--model", tiny_model()) == 2
    assert "missing: no such folder" in capsys.readouterr().err
    (tmp_path / "ds").mkdir()
    make_good_images(tmp_path / "ds", 1)
    assert cli(tmp_path / "ds", "--model", tiny_model(), "--general-threshold", "1.5") == 2
    assert "within 0..1" in capsys.readouterr().err
    assert cli(tmp_path / "ds", "--model", tmp_path / "nomodel") == 2
    assert "nomodel" in capsys.readouterr().err


# --- the ComfyUI node -------------------------------------------------------------------------------


def _node(comfy_pack):
    return comfy_pack.NODE_CLASS_MAPPINGS["TagLoomCaptionFolder"]()


def test_node_captions_a_folder_in_input_with_progress(comfy, comfy_pack, tmp_path):
    import comfy_stub

    node_cls = comfy_pack.NODE_CLASS_MAPPINGS["TagLoomCaptionFolder"]
    spec = node_cls.INPUT_TYPES()
    assert list(spec["required"])[:3] == ["folder", "model", "format"]
    input_dir = Path(comfy["folder_paths"].get_input_directory())
    imgs = make_good_images(input_dir / "my_dataset", 5)
    out = _node(comfy_pack).caption("my_dataset", str(tiny_model()), "txt", batch_size=2, device="cpu")
    summary, done, skipped, failed = out["result"]
    assert (done, skipped, failed) == (5, 0, 0)
    assert all(i.with_suffix(".txt").is_file() for i in imgs)
    assert comfy_stub.STATE.progress[-1] == (5, 5)
    out = _node(comfy_pack).caption(str(input_dir / "my_dataset"), str(tiny_model()), "jsonl", device="cpu")
    assert out["result"][1] == 5 and (input_dir / "my_dataset" / "captions.jsonl").is_file()


def test_node_refuses_folders_outside_the_allowed_ones(comfy, comfy_pack, tmp_path, monkeypatch):
    from tagloom.errors import TagLoomError

    outside = tmp_path / "elsewhere"
    make_good_images(outside, 1)
    input_dir = Path(comfy["folder_paths"].get_input_directory())
    (input_dir / "link").symlink_to(outside)
    for folder in (str(outside), "../../elsewhere", "link"):
        with pytest.raises(TagLoomError, match="folder not allowed"):
            _node(comfy_pack).caption(folder, str(tiny_model()), "txt", device="cpu")
    assert not list(outside.glob("*.txt"))
    monkeypatch.setenv("TAGLOOM_CAPTION_ROOTS", str(outside))  # the user allows it explicitly
    assert _node(comfy_pack).caption(str(outside), str(tiny_model()), "txt", device="cpu")["result"][1] == 1


def test_node_cancel_stops_and_rerun_continues(comfy, comfy_pack):
    import comfy_stub

    input_dir = Path(comfy["folder_paths"].get_input_directory())
    imgs = make_good_images(input_dir / "ds", 8)
    comfy_stub.STATE.interrupt = True  # the user pressed Cancel
    with pytest.raises(comfy_stub.InterruptProcessingException):
        _node(comfy_pack).caption("ds", str(tiny_model()), "txt", batch_size=2, device="cpu")
    first = sum(i.with_suffix(".txt").exists() for i in imgs)
    assert first < len(imgs)
    out = _node(comfy_pack).caption("ds", str(tiny_model()), "txt", batch_size=2, device="cpu")
    assert out["result"][1:] == (len(imgs) - first, first, 0)


def test_example_workflow_matches_the_node_and_runs(comfy, comfy_pack):
    """example_workflows/caption_folder*.json: the UI file's widget values line up with the node's
    inputs, the API file holds the same values, and the API prompt runs (its model swapped for the
    tiny one: the real one is a 1.2 GB download)."""
    from test_tagger_nodes import _widget_inputs

    node_cls = comfy_pack.NODE_CLASS_MAPPINGS["TagLoomCaptionFolder"]
    names = _widget_inputs(node_cls.INPUT_TYPES())
    ui = json.loads((REPO / "example_workflows" / "caption_folder.json").read_text(encoding="utf-8"))
    node = next(n for n in ui["nodes"] if n["type"] == "TagLoomCaptionFolder")
    assert len(node["widgets_values"]) == len(names)
    values = dict(zip(names, node["widgets_values"]))
    api = json.loads((REPO / "example_workflows" / "caption_folder_api.json").read_text(encoding="utf-8"))
    (inputs,) = [n["inputs"] for n in api.values() if n["class_type"] == "TagLoomCaptionFolder"]
    assert inputs == values
    assert values["model"] in node_cls.INPUT_TYPES()["required"]["model"][0]

    input_dir = Path(comfy["folder_paths"].get_input_directory())
    imgs = make_good_images(input_dir / values["folder"] / "sub", 3)
    out = node_cls().caption(**{**inputs, "model": str(tiny_model()), "device": "cpu"})
    assert out["result"][1:] == (3, 0, 0) and all(i.with_suffix(".txt").is_file() for i in imgs)
    assert out["ui"]["text"] == [out["result"][0]]  # what web/tagloom-node-text.js shows on the node
