"""`tagloom tag PATH...`: tag images (files or folders) and print the result per image.

Human-readable blocks (Caption / Tags / Ratings / Character tags / General tags / Artist tags) or,
with --json, one JSON object per line per image with keys file, ratings, general, character, artist,
caption, tags. A bad image is reported on stderr and the others are still tagged (exit status 2 at
the end if any failed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tagloom import names
from tagloom.cli._options import add_threshold_format_options


def register(subparsers) -> None:
    p = subparsers.add_parser("tag", help="tag images with a wd-v3 tagger (EVA-02 Large by default) or JoyTag",
                              description="Tag images. PATH may be image files or folders (searched recursively).")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--model", default=None, help="repo id, short name (e.g. wd-vit-tagger-v3, joytag) or model folder; "
                                                 "default: SmilingWolf/wd-eva02-large-tagger-v3")
    p.add_argument("--backend", default=None, choices=names.BACKENDS, help="inference backend (default auto)")
    p.add_argument("--device", default=None, choices=names.DEVICES, help="device (default auto)")
    p.add_argument("--precision", default="fp32", choices=names.INFERENCE_PRECISIONS,
                   help="fp32 (default); int8: ONNX on the CPU with int8 weights (quantized once, cached; about 2.5x "
                        "faster, scores within a few thousandths); bf16/fp16/auto: torch backend on a GPU")
    add_threshold_format_options(p)
    p.add_argument("--batch-size", type=int, default=8, help="images per model call for folders")
    p.add_argument("--json", action="store_true", help="one JSON object per image (JSON lines)")
    p.set_defaults(handler=run)


def _collect(paths) -> list[Path]:
    from tagloom.errors import InputFileError
    from tagloom.tagger.images import is_image_path

    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file() and is_image_path(p)))
        elif path.exists():
            out.append(path)
        else:
            raise InputFileError(path, "does not exist")
    return out


def _block(res) -> str:
    def scores(d):
        return "\n".join(f"  {k}: {v:.4f}" for k, v in d.items()) or "  (none)"

    return "\n".join([
        f"File: {res.file}",
        f"Caption: {res.caption}",
        f"Tags: {res.tags}",
        "Ratings:", scores(res.ratings),
        "Character tags:", scores(res.character),
        "General tags:", scores(res.general),
        "Artist tags:", scores(res.artist),
    ])


def run(args: argparse.Namespace) -> int:
    from tagloom import config
    from tagloom.errors import TagLoomError
    from tagloom.tagger import FormatOptions, load_tagger, read_threshold_json

    files = _collect(args.paths)
    if not files:
        raise TagLoomError("no images found in " + ", ".join(map(str, args.paths)))
    tagger = load_tagger(args.model, backend=args.backend or config.setting("tagger_backend"),
                         device=args.device or config.setting("device"), precision=args.precision)
    thresholds = tagger.thresholds
    if args.threshold_json:
        thresholds = read_threshold_json(args.threshold_json, thresholds)
    try:
        thresholds = thresholds.with_overrides(
            general=args.general_threshold, character=args.character_threshold, artist=args.artist_threshold,
            caption=args.caption_threshold, tags=args.tags_threshold,
            **{f"mcut_{g}": True for g in args.mcut},
        )
    except ValueError as e:
        raise TagLoomError(str(e)) from e
    options = FormatOptions().with_overrides(
        replace_underscores=not args.keep_underscores, escape_parentheses=not args.no_escape,
        exclude=args.exclude, include=args.include, max_tags=args.max_tags, trailing_comma=args.trailing_comma,
    )
    print(f"tagger: {tagger.name} ({tagger.backend}, {tagger.provider})", file=sys.stderr)
    failed = 0
    first = True
    batch = max(1, args.batch_size)
    for start in range(0, len(files), batch):
        chunk = files[start : start + batch]
        try:
            results = tagger.tag_images(chunk, thresholds, options, batch_size=batch)
        except TagLoomError:
            # One bad file must not lose the others: retry this chunk image by image.
            results = []
            for f in chunk:
                try:
                    results.extend(tagger.tag_images([f], thresholds, options))
                except TagLoomError as e:
                    print(f"error: {e}", file=sys.stderr)
                    failed += 1
        for res in results:
            if args.json:
                print(json.dumps(res.to_json(), ensure_ascii=False))
            else:
                if not first:
                    print()
                print(_block(res))
                first = False
            sys.stdout.flush()
    return 2 if failed else 0
