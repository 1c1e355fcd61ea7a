"""The tagger trainer on CPU with tiny timm EVA-02 models built from configs (no downloads)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from train_data import make_dataset

REPO = Path(__file__).resolve().parents[1]
TINY_ARGS = {"embed_dim": 32, "depth": 2, "num_heads": 2, "ref_feat_shape": [4, 4]}


def _opts(ds, out, **kw):
    from tagloom.training.tagger.options import TaggerOptions

    base = dict(dataset=ds, out=out, model_name="eva02_large_patch14_448", resolution=56, model_args=dict(TINY_ARGS),
                epochs=2, batch_size=8, lr=3e-3, workers=0, onnx=False, val_fraction=0.25, warmup=0.0)
    base.update(kw)
    return TaggerOptions(**base)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("tagger_ds")
    make_dataset(root, 24)
    return root


def test_metrics_on_known_values():
    from tagloom.training.tagger.metrics import average_precision, evaluate, pr_equal_threshold

    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 0, 1])) == pytest.approx((1 + 2 / 3) / 2)
    probs = np.array([[0.9, 0.2], [0.8, 0.7], [0.1, 0.6], [0.3, 0.1]])
    targets = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    t, f1 = pr_equal_threshold(probs, targets)
    assert 0.3 < t <= 0.6 and f1 == pytest.approx(1.0)
    m = evaluate(probs, targets, [0, 4])
    assert m["map"] == pytest.approx(1.0) and set(m["per_category"]) == {"general", "character"}


def test_losses_lower_and_resume_equals_uninterrupted(dataset, tmp_path):
    from safetensors.torch import load_file

    from tagloom.training.tagger.train import train_tagger

    history = []
    full = train_tagger(_opts(dataset, tmp_path / "full", epochs=3, loss="asl", optimizer="lamb"),
                        on_epoch=lambda e, m: history.append(m["train_loss"]))
    assert history[-1] < history[0]

    class Killed(Exception):
        pass

    def kill_after_first(epoch, metrics):
        if epoch == 0:
            raise Killed()

    with pytest.raises(Killed):
        train_tagger(_opts(dataset, tmp_path / "split", epochs=3, loss="asl", optimizer="lamb"), on_epoch=kill_after_first)
    assert (tmp_path / "split" / "checkpoints" / "last.pt").is_file()
    resumed = train_tagger(_opts(dataset, tmp_path / "split", epochs=3, loss="asl", optimizer="lamb", resume=True))
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k].numpy(), b[k].numpy()), k
    m1 = json.loads((full / "metrics.json").read_text())["history"]
    m2 = json.loads((resumed / "metrics.json").read_text())["history"]
    assert [h["train_loss"] for h in m1] == [h["train_loss"] for h in m2]


def test_output_folder_loads_and_onnx_matches_our_evaluation(dataset, tmp_path):
    """The folder loads through tagloom.tagger.timm_model and its ONNX export (wd convention:
    NHWC BGR 0..255) gives the same probabilities as the trainer's own PyTorch evaluation."""
    import onnxruntime as ort
    import torch

    from tagloom.tagger.timm_model import load_model, read_config
    from tagloom.training.data.images import load_rgb
    from tagloom.training.tagger.data import pad_square_resize, to_tensor_bgr
    from tagloom.training.tagger.train import train_tagger

    out = train_tagger(_opts(dataset, tmp_path / "m", epochs=1, onnx=True, loss="focal", precision="bf16"))
    for name in ("config.json", "model.safetensors", "selected_tags.csv", "threshold.json", "model.onnx"):
        assert (out / name).is_file(), name
    thresholds = json.loads((out / "threshold.json").read_text())
    assert 0 < thresholds["general"] < 1 and "character" in thresholds
    config = read_config(out)
    model = load_model(out)
    imgs = sorted(dataset.glob("*.png"))[:3]
    ims = [pad_square_resize(load_rgb(p), 56) for p in imgs]
    with torch.no_grad():
        ours = torch.sigmoid(model(torch.stack([to_tensor_bgr(im, config["pretrained_cfg"]["mean"],
                                                              config["pretrained_cfg"]["std"]) for im in ims]))).numpy()
    wd_input = np.stack([np.asarray(im, dtype=np.float32)[:, :, ::-1] for im in ims])  # NHWC BGR 0..255
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_probs = sess.run(None, {sess.get_inputs()[0].name: wd_input})[0]
    np.testing.assert_allclose(onnx_probs, ours, atol=1e-4)
    header = (out / "selected_tags.csv").read_text().splitlines()[0]
    assert header == "tag_id,name,category,count"


def test_init_from_a_model_folder_keeps_shared_tag_rows(dataset, tmp_path):
    """Fine-tuning from an existing wd-style folder: the backbone is taken, head rows are copied by tag name."""
    from tiny_models import make_tiny_tagger
    from tagloom.training.tagger.train import create_network
    from safetensors.torch import load_file

    src = make_tiny_tagger(tmp_path / "base", onnx=False)
    opts = _opts(dataset, tmp_path / "x", init=str(src))
    opts._tag_names = ["general", "red", "solo"]  # "general" and "solo" exist in the tiny model's vocabulary
    model, _cfg = create_network(opts, 3)
    state = load_file(str(src / "model.safetensors"))
    own = model.state_dict()
    assert np.array_equal(own["patch_embed.proj.weight"].numpy(), state["patch_embed.proj.weight"].numpy())
    assert np.array_equal(own["head.weight"][0].numpy(), state["head.weight"][0].numpy())  # general
    assert np.array_equal(own["head.weight"][2].numpy(), state["head.weight"][5].numpy())  # solo


@pytest.mark.slow
def test_cli_one_epoch_eva02_tiny_32_images(tmp_path):
    """The issue's acceptance run: eva02_tiny at 64 px, 32 images, one epoch, as a child process."""
    ds = tmp_path / "ds"
    make_dataset(ds, 32)
    out = tmp_path / "model"
    r = subprocess.run([sys.executable, "-m", "tagloom", "train", "tagger", str(ds), "--out", str(out),
                        "--model-name", "eva02_tiny_patch14_224", "--image-size", "64", "--epochs", "1",
                        "--batch-size", "8"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "TAGLOOM_PROGRESS" in r.stdout and (out / "model.onnx").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "eva02_tiny_patch14_224" and cfg["pretrained_cfg"]["input_size"] == [3, 64, 64]

    # the folder works as `tagloom tag --model DIR`, with the trainer's own evaluation's probabilities
    import torch

    from tagloom.tagger.timm_model import load_model
    from tagloom.training.data.images import load_rgb
    from tagloom.training.data.prepare import read_selected_tags
    from tagloom.training.tagger.data import pad_square_resize, to_tensor_bgr

    images = sorted(ds.glob("*.png"))[:2]
    r = subprocess.run([sys.executable, "-m", "tagloom", "tag", *map(str, images), "--model", str(out), "--json",
                        "--general-threshold", "0"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 2
    names = [t[0] for t in read_selected_tags(out / "selected_tags.csv")]
    model = load_model(out)
    for path, row in zip(images, rows):
        x = to_tensor_bgr(pad_square_resize(load_rgb(path), 64), cfg["pretrained_cfg"]["mean"], cfg["pretrained_cfg"]["std"])
        with torch.no_grad():
            ours = dict(zip(names, torch.sigmoid(model(x[None]))[0].tolist()))
        scores = {**row["ratings"], **row["general"]}
        assert set(scores) == set(names)
        for tag, score in scores.items():
            assert abs(score - ours[tag]) < 1e-4, (tag, score, ours[tag])


@pytest.mark.slow
def test_runs_unchanged_under_torchrun_two_processes(dataset, tmp_path):
    """DDP on CPU (gloo): the same command under torch.distributed.run, no code changes."""
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "tagloom", "train", "tagger", str(dataset), "--out", str(out), "--model-name",
                        "eva02_large_patch14_448", "--image-size", "56", "--model-args", json.dumps(TINY_ARGS),
                        "--epochs", "1", "--batch-size", "4", "--workers", "0", "--no-onnx"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('"event": "done"') == 1  # only rank 0 reports and writes
    start = json.loads(next(l for l in r.stdout.splitlines() if '"event": "start"' in l).split(" ", 1)[1])
    assert start["total"] == 3  # 18 training images / 2 ranks / batch 4 -> 3 steps per rank
    assert (out / "model.safetensors").is_file() and (out / "threshold.json").is_file()


def test_tar_shards_train_the_same_as_the_folder(dataset, tmp_path):
    """`prepare --shards N` packs the split into WebDataset-style tars; training from them gives the
    very weights training from the image files gives."""
    from safetensors.torch import load_file

    from tagloom.training.data import prepare as prep
    from tagloom.training.data.shards import read_shards
    from tagloom.training.tagger.train import train_tagger

    result = prep.prepare(dataset, val_fraction=0.25)
    folder = prep.write(result, tmp_path / "plain", 1, 0.25, 0)
    sharded = prep.write(result, tmp_path / "sharded", 1, 0.25, 0, shards=5)
    tars = sorted((sharded / "shards").glob("train-*.tar"))
    assert len(tars) == -(-len(result.train) // 5)
    assert [text for _m, text, _k in read_shards(tars)] == [i.caption for i in result.train]
    a = train_tagger(_opts(folder, tmp_path / "a", epochs=1))
    b = train_tagger(_opts(sharded, tmp_path / "b", epochs=1))
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
