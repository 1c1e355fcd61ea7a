"""`tagloom caption --engine ray` on a real local Ray cluster (CPU workers): same outputs as local.

Slow (a Ray cluster takes ~10 s to start on 2 cores); skipped with the reason when Ray is not
installed or cannot start here.
"""

from __future__ import annotations

import json
import shutil

import pytest

from caption_helpers import make_awkward_images, make_good_images, reference_results, tiny_model
from tagloom.caption import CaptionJob, ModelChoice, run_caption

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ray[data]')")
    pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'ray[data]')")
    from tagloom.caption.ray_engine import _init_ray

    try:
        _init_ray(None)  # what `--engine ray` does without --ray-address: a local cluster
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"a local Ray cluster cannot start here: {e}")
    yield ray
    ray.shutdown()


def test_ray_engine_writes_what_the_local_engine_writes(ray_cluster, tmp_path):
    root = tmp_path / "ds"
    good = make_good_images(root, 6)
    awkward = make_awkward_images(root / "sub")
    ok = good + [awkward["cmyk"], awkward["rgba"]]
    for name in ("png16", "palette", "animated", "webp", "not_image"):
        awkward[name].unlink()  # keep the Ray run small: the local tests cover every kind
    job = CaptionJob(root, ModelChoice(model=str(tiny_model())), recursive=True, fmt="jsonl", batch_size=3,
                     engine="ray")
    summary = run_caption(job)
    assert summary.done == len(ok), summary.text()
    assert [f for f, _ in summary.failed] == ["sub/truncated.jpg"]
    assert "truncated" in summary.failed[0][1]
    assert summary.provider.startswith("ray: 1 onnx actor(s) on cpu")
    got = {json.loads(line)["file"]: json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines()}
    ref = reference_results(tiny_model(), ok, root)
    assert got.keys() == ref.keys()
    for name, expected in ref.items():
        assert got[name]["tags"] == expected["tags"] and got[name]["caption"] == expected["caption"]
        assert all(abs(got[name]["general"][t] - s) < 1e-3 for t, s in expected["general"].items())

    # Resume works the same way: a second Ray run has nothing left to do.
    again = run_caption(job)
    assert again.done == 0 and again.skipped == len(ok)

    # The GPU route (bytes to the actor, decoded there by torchvision) on CPU workers, .txt output.
    root2 = tmp_path / "ds2"
    shutil.copytree(root, root2, ignore=shutil.ignore_patterns("*.jsonl"))
    job2 = CaptionJob(root2, ModelChoice(model=str(tiny_model()), backend="torch"), recursive=True, batch_size=4,
                      engine="ray", decode="gpu")
    summary2 = run_caption(job2)
    assert summary2.done == len(ok) and len(summary2.failed) == 1
    assert all((root2 / p.relative_to(root)).with_suffix(".txt").is_file() for p in ok)
