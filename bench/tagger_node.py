"""TagLoom Interrogate against pythongosssss' WD14Tagger node in one real ComfyUI, on the same ONNX
model and images, beside ONNX Runtime alone (issue 13 item 8). Prints one table.

    # once: a random-weight ViT-B/16 448 in the wd-v3 layout (10,861 labels), ~350 MB
    .venv/bin/python bench/tagger_node.py make-model ~/wd-vit-random
    # a harness ComfyUI with both packs (WD14Tagger from a checkout outside this repository)
    python3 ../shared/tools/comfy_harness.py start .:ComfyUI-TagLoom ~/ComfyUI-WD14-Tagger:ComfyUI-WD14-Tagger
    .venv/bin/python bench/tagger_node.py run ~/wd-vit-random --comfyui $HARNESS_DIR/ComfyUI \
        --wd14 ~/ComfyUI-WD14-Tagger [--images 16] [--runs 2]

`run` copies the model into both packs' model folders (TagLoom's loader runs it at each
``--precision``: fp32 as exported, int8 with the weights quantized once), writes 1024x1024 images into ComfyUI's input
folder, queues a prompt per node (LoadImage -> RepeatImageBatch -> tagger -> PreviewAny; a new
threshold each run so ComfyUI's cache never answers) and reads each prompt's execution time from
ComfyUI's own history timestamps. "ORT alone": the same model.onnx in this process on the same
pixels, preprocessed beforehand, one image per call and in batches of 8 (default session options).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
NUM_LABELS = 10861  # wd-vit-tagger-v3's selected_tags.csv


def make_model(out: Path) -> None:
    import timm
    import torch

    from tagloom.tagger.export import export_onnx

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", img_size=448, num_classes=NUM_LABELS, pretrained=False).eval()
    with torch.no_grad():  # a trained tagger says "no" to most tags: a realistic number of tags per image
        model.head.bias.fill_(-4.0)
    export_onnx(model, out / "model.onnx", 448, [0.5] * 3, [0.5] * 3)
    with open(out / "selected_tags.csv", "w", encoding="utf-8") as f:
        f.write("tag_id,name,category,count\n")
        for i in range(NUM_LABELS):
            name, cat = (("general", "sensitive", "questionable", "explicit")[i], 9) if i < 4 else (f"tag_{i}", 0 if i < 9000 else 4)
            f.write(f"{i},{name},{cat},{NUM_LABELS - i}\n")
    (out / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_224", "num_classes": NUM_LABELS,
                                                 "pretrained_cfg": {"input_size": [3, 448, 448], "mean": [0.5] * 3,
                                                                    "std": [0.5] * 3}}))
    print(f"wrote {out}")


def _post(url: str, data: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(data).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def run_prompt(base: str, prompt: dict, timeout: float = 1800) -> float:
    """Seconds ComfyUI spent executing the prompt (its history's start/success timestamps)."""
    pid = _post(f"{base}/prompt", {"prompt": prompt})["prompt_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hist = _get(f"{base}/history/{pid}").get(pid)
        if hist and hist.get("status", {}).get("completed") is not None:
            status = hist["status"]
            if status.get("status_str") != "success":
                raise RuntimeError(json.dumps(status)[:2000])
            stamps = {m[0]: m[1].get("timestamp") for m in status.get("messages", [])}
            return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0
        time.sleep(0.5)
    raise TimeoutError(pid)


def prompts(n: int, threshold: float, model_name: str, precision: str = "fp32") -> dict:
    base = {"1": {"class_type": "LoadImage", "inputs": {"image": "bench_tagger_0.png"}},
            "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": n}}}
    ours = {**base,
            "3": {"class_type": "TagLoomTaggerLoader", "inputs": {"model": model_name, "backend": "onnx", "device": "cpu",
                                                                   "precision": precision}},
            "4": {"class_type": "TagLoomInterrogate", "inputs": {
                "tagger": ["3", 0], "image": ["2", 0], "general_threshold": threshold, "character_threshold": 0.85,
                "artist_threshold": 0.85, "mcut_general": False, "mcut_character": False, "replace_underscores": True,
                "escape_parentheses": True, "exclude_tags": "", "max_tags": 0, "trailing_comma": False}},
            "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 1]}}}
    theirs = {**base,
              "3": {"class_type": "WD14Tagger|pysssss", "inputs": {
                  "image": ["2", 0], "model": model_name, "threshold": threshold, "character_threshold": 0.85,
                  "replace_underscore": True, "trailing_comma": False, "exclude_tags": ""}},
              "5": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}}}
    return {"ours": ours, "theirs": theirs}


def ort_alone(model_path: Path, image: Path, n: int, batch8: bool = True) -> dict:
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    img = Image.open(image).convert("RGB").resize((448, 448), Image.BICUBIC)
    x = np.asarray(img, dtype=np.float32)[:, :, ::-1][None].copy()
    sess.run(None, {"input": x})  # warm-up
    out = {}
    t = time.perf_counter()
    for _ in range(n):
        sess.run(None, {"input": x})
    out["batch 1"] = n / (time.perf_counter() - t)
    if not batch8:
        return out
    xb = np.repeat(x, 8, axis=0)
    t = time.perf_counter()
    for _ in range(max(1, n // 8)):
        sess.run(None, {"input": xb})
    out["batch 8"] = max(1, n // 8) * 8 / (time.perf_counter() - t)
    return out


def run(args) -> int:
    model_dir = Path(args.model).expanduser()
    comfy = Path(args.comfyui).expanduser()
    name = "wd-vit-random"
    ours_dir = comfy / "models" / "tagloom" / name
    if not (ours_dir / "model.onnx").is_file():
        shutil.copytree(model_dir, ours_dir, dirs_exist_ok=True)
    wd14_models = Path(args.wd14).expanduser() / "models"
    wd14_models.mkdir(exist_ok=True)
    if not (wd14_models / f"{name}.onnx").is_file():
        shutil.copy(model_dir / "model.onnx", wd14_models / f"{name}.onnx")
        shutil.copy(model_dir / "selected_tags.csv", wd14_models / f"{name}.csv")
    import numpy as np
    from PIL import Image

    image = comfy / "input" / "bench_tagger_0.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)).save(image)
    base = args.url.rstrip("/")
    print(f"# {args.images} images of 1024x1024 per prompt, model {name} (ViT-B/16 448, random weights, "
          f"{NUM_LABELS} labels); {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    precisions = [p for p in args.precision.split(",") if p]
    rows = []
    warm = {p: prompts(2, 0.5, name, p) for p in precisions}
    for p in precisions:  # first use: model load (int8: quantized once), images into ComfyUI's cache
        run_prompt(base, warm[p]["ours"])
    run_prompt(base, warm[precisions[0]]["theirs"])
    runs = [("ours", p, f"TagLoom Interrogate, {p}") for p in precisions] + [("theirs", "fp32", "WD14Tagger|pysssss")]
    for key, p, label in runs:
        rates = []
        for r in range(args.runs):
            secs = run_prompt(base, prompts(args.images, 0.35 + 0.001 * (r + 1) + (0.0005 if key == "theirs" else 0), name, p)[key])
            rates.append(args.images / secs)
        rows.append((label, p, rates))
    alone = {f"fp32, {k}": v for k, v in ort_alone(model_dir / "model.onnx", image, args.images).items()}
    if "int8" in precisions:
        os.environ.setdefault("TAGLOOM_HOME", str(comfy / "user" / "tagloom"))
        from tagloom.tagger.quantize import int8_model

        alone["int8, batch 1"] = ort_alone(int8_model(model_dir / "model.onnx"), image, args.images, batch8=False)["batch 1"]
    print(f"{'what':<38} {'img/s (each run)':<26} {'best':>6}")
    for label, _, rates in rows:
        print(f"{label:<38} {', '.join(f'{x:.3f}' for x in rates):<26} {max(rates):>6.3f}")
    for k, v in alone.items():
        print(f"{'ONNX Runtime alone, ' + k:<38} {'':<26} {v:>6.3f}")
    theirs = max(rows[-1][2])
    for label, p, rates in rows[:-1]:
        print(f"{label} / WD14Tagger: {max(rates) / theirs:.2f}x; / ORT alone ({p}, batch 1): "
              f"{max(rates) / alone[f'{p}, batch 1']:.0%}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-model", help="build the random ViT-B/16 448 wd-v3-layout model folder")
    m.add_argument("out")
    r = sub.add_parser("run", help="time both nodes in a running harness ComfyUI")
    r.add_argument("model")
    r.add_argument("--comfyui", required=True, help="the harness's ComfyUI folder")
    r.add_argument("--wd14", required=True, help="the ComfyUI-WD14-Tagger checkout the harness loads")
    r.add_argument("--url", default="http://127.0.0.1:8199")
    r.add_argument("--images", type=int, default=16)
    r.add_argument("--runs", type=int, default=2)
    r.add_argument("--precision", default="fp32,int8",
                   help="comma-separated precisions of TagLoom's loader to time (default fp32,int8)")
    args = ap.parse_args()
    if args.cmd == "make-model":
        make_model(Path(args.out).expanduser())
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
