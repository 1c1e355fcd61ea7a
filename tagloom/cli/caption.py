"""`tagloom caption DIR`: caption every image of a folder (see docs/caption.md)."""

from __future__ import annotations

import argparse
import json
import sys

from tagloom import names
from tagloom.cli._options import add_threshold_format_options
from tagloom.progress import Progress


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "caption",
        help="caption every image in a folder (a .txt/.json beside each image, or one JSONL)",
        description="Caption a folder of images with a tagger, batched and pipelined. Killed and "
        "restarted, it continues where it stopped; images that fail are listed at the end.",
    )
    p.add_argument("folder", metavar="DIR", help="folder of images")
    p.add_argument("--recursive", "-r", action="store_true", help="include sub-folders")
    p.add_argument("--model", default=None, help="model name, hub repo id or folder (default: the configured tagger)")
    p.add_argument("--backend", choices=names.BACKENDS, default="auto", help="auto: torch on CUDA where the model has torch weights, else ONNX Runtime")
    p.add_argument("--format", dest="fmt", choices=("txt", "json", "jsonl"), default="txt",
                   help="txt: the tags string beside each image (kohya); json: all scores beside each image; "
                   "jsonl: one file with all scores (default DIR/captions.jsonl)")
    p.add_argument("--output", "-o", default=None, help="the JSONL file for --format jsonl")
    p.add_argument("--text", dest="text_field", choices=("tags", "caption"), default="tags",
                   help="what a .txt holds: tags (general tags, the default) or caption (character + general + artist)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace existing captions")
    mode.add_argument("--skip-existing", action="store_true", help="keep existing captions (the default)")
    p.add_argument("--batch-size", type=int, default=0, help="images per model call (default 16 on CPU, 64 on CUDA)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--precision", choices=names.INFERENCE_PRECISIONS, default="auto",
                   help="torch backend: auto = bf16 on GPUs with bf16 hardware (Ampere+), else fp32 (fp32 for scores identical to `tagloom tag`); ONNX on the CPU: int8 = weights quantized once, about 2.5x faster, scores within a few thousandths")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA, large folders)")
    p.add_argument("--decode", choices=("auto", "cpu", "gpu"), default="auto",
                   help="where JPEGs are decoded: auto = on the GPU with CUDA and the torch backend, else CPU")
    p.add_argument("--workers", type=int, default=None, help="decode workers (default: every core)")
    p.add_argument("--decode-mode", choices=("thread", "process"), default="thread", help="CPU decoding in threads or processes")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: every core)")
    g = p.add_argument_group("thresholds and formatting (as `tagloom tag`)")
    add_threshold_format_options(g)
    r = p.add_argument_group("Ray (--engine ray)")
    p.add_argument("--engine", choices=names.CAPTION_ENGINES, default="local",
                   help="local: this machine; ray: a Ray cluster (one model actor per GPU)")
    r.add_argument("--ray-address", default=None,
                   help="cluster address (ray://head:10001 or auto); default: start a local cluster")
    r.add_argument("--ray-actors", type=int, default=None, help="model actors (default: one per GPU, else one)")
    p.add_argument("--summary-json", default=None, help="also write the summary (with every failure) to this file")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


class TqdmProgress(Progress):
    """A progress bar on stderr with images/s and ETA (Ctrl-C arrives as KeyboardInterrupt)."""

    def __init__(self, quiet: bool):
        super().__init__()
        self.quiet, self.bar = quiet, None

    def start(self, total: int) -> None:
        from tqdm import tqdm

        super().start(total)
        self.bar = tqdm(total=total, unit="img", desc="captioning", file=sys.stderr, disable=self.quiet,
                        dynamic_ncols=True, smoothing=0.1)

    def shown(self) -> None:
        if self.bar is not None:
            self.bar.update(self.done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def job_from_args(args: argparse.Namespace):
    from pathlib import Path

    from tagloom.caption.job import CaptionJob
    from tagloom.caption.model import ModelChoice

    thresholds = {
        "general": args.general_threshold, "character": args.character_threshold, "artist": args.artist_threshold,
        "caption": args.caption_threshold, "tags": args.tags_threshold,
    }
    for group in args.mcut:
        thresholds[f"mcut_{group}"] = True
    fmt = {
        "replace_underscores": False if args.keep_underscores else None,
        "escape_parentheses": False if args.no_escape else None,
        "exclude": args.exclude, "include": args.include, "max_tags": args.max_tags,
        "trailing_comma": True if args.trailing_comma else None,
    }
    choice = ModelChoice(
        model=args.model, backend=args.backend, threshold_json=args.threshold_json,
        thresholds={k: v for k, v in thresholds.items() if v is not None},
        format={k: v for k, v in fmt.items() if v is not None},
    )
    return CaptionJob(
        folder=Path(args.folder), model=choice, recursive=args.recursive, fmt=args.fmt,
        output=Path(args.output) if args.output else None, overwrite=args.overwrite, text_field=args.text_field,
        batch_size=args.batch_size, device=args.device, precision=args.precision, compile=args.compile,
        decode=args.decode, workers=args.workers, decode_mode=args.decode_mode, threads=args.threads,
        engine=args.engine, ray_address=args.ray_address, ray_actors=args.ray_actors,
    )


def run(args: argparse.Namespace) -> int:
    from tagloom.caption.job import run_caption
    from tagloom.errors import TagLoomError

    if args.batch_size < 0:
        raise TagLoomError("--batch-size must be positive")
    try:
        job = job_from_args(args)
    except (ValueError, TypeError) as e:  # a threshold outside 0..1, a bad option value
        raise TagLoomError(str(e)) from e
    summary = run_caption(job, TqdmProgress(args.quiet))
    print(summary.text(), file=sys.stderr)
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as f:
            json.dump(summary.to_json(), f, indent=2, ensure_ascii=False)
    # 0: everything captioned; 1: some images failed (listed above), the rest is written.
    return 1 if summary.failed else 0
