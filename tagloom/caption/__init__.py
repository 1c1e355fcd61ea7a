"""Batch captioning: a folder of images -> a caption per image, at the speed of the hardware.

- files.py    which images, where captions go, atomic writes
- decode.py   CPU decoding on every core (thread or process pool) to the model's square pixels
- gpu.py      JPEG decoding and resizing on the GPU (nvjpeg through torchvision), CPU fallback
- engines.py  batched ONNX Runtime / torch engines (bf16, torch.compile, ORT CUDA)
- model.py    the tagger model as the job sees it (labels, thresholds, interpretation from tagloom.tagger)
- writers.py  .txt/.json beside each image or one JSONL, and resuming a killed job
- plan.py     what the local and Ray engines share: device, model and decoder plan, predict, write
- job.py      CaptionJob, the overlapped local pipeline, the summary
- ray_engine.py  the same job on a Ray cluster

Entry point: ``run_caption(CaptionJob(folder, ...), progress)`` -> Summary. See docs/caption.md.
"""

from tagloom.caption.job import CaptionJob, Progress, Summary, run_caption
from tagloom.caption.model import ModelChoice

__all__ = ["CaptionJob", "ModelChoice", "Progress", "Summary", "run_caption"]
