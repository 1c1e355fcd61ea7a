"""`tagloom train prepare|fetch-danbooru|tagger|lora`: datasets and trainers (see docs/training.md).

Trainers print one ``TAGLOOM_PROGRESS {json}`` line per step on stdout so the ComfyUI node (which
runs this command as a child process) can show progress and loss; everything else is plain text.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="prepare datasets, train taggers and LoRAs")
    sub = p.add_subparsers(dest="train_command", metavar="WHAT")
    p.set_defaults(handler=lambda a: (p.print_help(), 1)[1])

    pp = sub.add_parser("prepare", help="validate a dataset folder, build selected_tags.csv and a train/val split")
    pp.add_argument("dataset", type=Path, help="folder of images with same-named .txt captions")
    pp.add_argument("--out", type=Path, required=True, help="output folder (selected_tags.csv, the split, shards)")
    pp.add_argument("--min-count", type=int, default=1, help="keep tags on at least N images (default 1)")
    pp.add_argument("--val-fraction", type=float, default=0.1, help="share of images held out for validation")
    pp.add_argument("--seed", type=int, default=0, help="random seed of the split")
    pp.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU count, max 8)")
    pp.add_argument("--tag-db", type=Path, default=None, help="tag database for categories (default: the pack's)")
    pp.add_argument("--shards", type=int, default=0, metavar="N",
                    help="also pack images + captions into tar shards of N images (read by the tagger trainer)")
    pp.add_argument("--caption-missing", metavar="MODEL", default=None,
                    help="tag images without a caption file with this tagger model and write their .txt")
    pp.set_defaults(handler=_prepare)

    fd = sub.add_parser("fetch-danbooru", help="build a dataset folder from Danbooru's posts API")
    fd.add_argument("--tags", required=True, help='a Danbooru search, e.g. "hatsune_miku rating:general"')
    fd.add_argument("--limit", type=int, required=True, help="posts to download")
    fd.add_argument("--out", type=Path, required=True, help="dataset folder to write (images + .txt)")
    fd.add_argument("--base-url", default=None, help="Danbooru server (default https://danbooru.donmai.us)")
    fd.add_argument("--character", action="store_true", help="add character tags to captions")
    fd.add_argument("--copyright", action="store_true", help="add copyright tags to captions")
    fd.add_argument("--artist", action="store_true", help="add artist tags to captions")
    fd.add_argument("--spaces", action="store_true", help="write tags with spaces instead of underscores")
    fd.add_argument("--rate", type=float, default=2.0, help="requests per second (default 2)")
    fd.set_defaults(handler=_fetch)

    from tagloom.training.tagger.options import add_arguments as tagger_args
    from tagloom.training.lora.options import add_arguments as lora_args

    tg = sub.add_parser("tagger", help="train a timm tagger; writes a model folder `tagloom tag --model` loads")
    tagger_args(tg)
    tg.set_defaults(handler=_tagger)

    lr = sub.add_parser("lora", help="train an SD1.5/SDXL LoRA; writes a kohya-format .safetensors")
    lora_args(lr)
    lr.set_defaults(handler=_lora)


def _prepare(args: argparse.Namespace) -> int:
    from tagloom.training.data import prepare as prep

    captioner = prep.tagger_captioner(args.caption_missing) if args.caption_missing else None
    result = prep.prepare(args.dataset, args.min_count, args.val_fraction, args.seed, args.workers,
                          args.tag_db, captioner, log=print)
    prep.write(result, args.out, args.min_count, args.val_fraction, args.seed, args.shards)
    for p in result.problems:
        print(f"{p.kind}: {p.path}: {p.detail}")
    print(f"{len(result.items)} usable images ({len(result.train)} train, {len(result.val)} val), "
          f"{len(result.tags)} tags, {len(result.problems)} problems; wrote {args.out}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from tagloom.training.data.danbooru import DEFAULT_BASE_URL, FetchOptions, fetch

    opts = FetchOptions(tags=args.tags, limit=args.limit, out=args.out, base_url=args.base_url or DEFAULT_BASE_URL,
                        character=args.character, copyright=args.copyright, artist=args.artist,
                        spaces=args.spaces, rate=args.rate)
    result = fetch(opts)
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(result.skipped.items())) or "none"
    print(f"downloaded {result.downloaded}, already present {result.existing}, skipped: {skipped}")
    return 0


def _tagger(args: argparse.Namespace) -> int:
    from tagloom.training.tagger.options import from_args
    from tagloom.training.tagger.train import train_tagger

    train_tagger(from_args(args))
    return 0


def _lora(args: argparse.Namespace) -> int:
    from tagloom.training.lora.options import from_args
    from tagloom.training.lora.train import train_lora

    train_lora(from_args(args))
    return 0
