"""`tagloom train prepare`: validate a dataset folder, build its tag vocabulary and split it.

Writes into the output folder:
  selected_tags.csv  tag_id,name,category,count (wd layout; ratings first, then general, character,
                     artist, copyright, meta; within a category by count, then name)
  split.json         {"root", "train": [rel paths], "val": [rel paths], "val_fraction", "seed"}
  report.json        every problem found (unreadable image, missing/empty caption, duplicate)

Problems are reported and the affected images left out; nothing here raises on bad data except a
missing dataset folder. The split is a pure function of each image's relative path and the seed,
so adding images never moves existing ones between train and validation.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tagloom.errors import InputFileError, TagLoomError
from tagloom.training.data.dataset import Item, canonical_tag, scan
from tagloom.training.data.images import file_digest, load_rgb, parallel_map

RATING_TAGS = {"general": "general", "sensitive": "sensitive", "questionable": "questionable",
               "explicit": "explicit", "safe": "general", "rating:general": "general",
               "rating:sensitive": "sensitive", "rating:questionable": "questionable",
               "rating:explicit": "explicit", "rating:g": "general", "rating:s": "sensitive",
               "rating:q": "questionable", "rating:e": "explicit"}
RATING, GENERAL, ARTIST, COPYRIGHT, CHARACTER, META = 9, 0, 1, 3, 4, 5
CATEGORY_ORDER = [RATING, GENERAL, CHARACTER, ARTIST, COPYRIGHT, META]


@dataclass
class Problem:
    path: str
    kind: str  # unreadable | missing_caption | empty_caption | duplicate | captioned
    detail: str = ""


@dataclass
class Prepared:
    root: Path
    items: list[Item]  # usable (readable, captioned, not duplicate)
    train: list[Item]
    val: list[Item]
    tags: list[tuple[str, int, int]]  # (name, category, count)
    problems: list[Problem] = field(default_factory=list)

    def tag_index(self) -> dict[str, int]:
        return {name: i for i, (name, _c, _n) in enumerate(self.tags)}


def item_tags(item: Item) -> list[str]:
    """An item's tags as vocabulary names (ratings normalised to the wd rating names), de-duplicated."""
    out: list[str] = []
    for t in item.tags:
        name = canonical_tag(t)
        name = RATING_TAGS.get(name, name)
        if name not in out:
            out.append(name)
    return out


def _check(item: Item) -> tuple[Item, str | None, str | None]:
    """(item, error or None, sha1 or None): decode the whole image, hash the file."""
    try:
        load_rgb(item.path)
        return item, None, file_digest(item.path)
    except InputFileError as e:
        return item, e.problem, None
    except OSError as e:
        return item, str(e), None


def is_val(rel: str, seed: int, fraction: float) -> bool:
    h = hashlib.sha1(f"{seed}:{rel}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


def split(items: list[Item], val_fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    val = [i for i in items if is_val(i.rel, seed, val_fraction)]
    if val_fraction > 0 and not val and len(items) >= 2:
        # a tiny set may hash nothing into validation: take the lowest-hash image, deterministically
        pick = min(items, key=lambda i: hashlib.sha1(f"{seed}:{i.rel}".encode()).digest())
        val = [pick]
    if len(val) == len(items) and len(items) >= 2:
        val = val[: max(1, int(len(items) * val_fraction))]
    val_set = {i.rel for i in val}
    return [i for i in items if i.rel not in val_set], val


def tag_categories(names: list[str], tag_db: Path | None = None) -> dict[str, int]:
    """Danbooru category per tag from the tag database where it knows the tag (else general)."""
    cats = {n: (RATING if n in RATING_TAGS.values() else GENERAL) for n in names}
    from tagloom.tags.db import TagDB, default_path

    path = Path(tag_db) if tag_db else default_path()
    if not path.is_file():
        return cats  # no database installed: every non-rating tag stays general
    with TagDB(path) as db:
        for n in names:
            if cats[n] == RATING:
                continue
            row = db.get(n)
            if row and row.get("category") is not None and int(row["category"]) in (0, 1, 3, 4, 5):
                cats[n] = int(row["category"])
    return cats


def build_vocab(items: list[Item], min_count: int, tag_db: Path | None = None) -> list[tuple[str, int, int]]:
    counts: Counter[str] = Counter()
    for item in items:
        counts.update(item_tags(item))  # one count per image; repeats do not inflate the vocabulary
    names = [n for n, c in counts.items() if c >= min_count or n in RATING_TAGS.values()]
    cats = tag_categories(names, tag_db)
    order = {c: i for i, c in enumerate(CATEGORY_ORDER)}
    return sorted(((n, cats[n], counts[n]) for n in names), key=lambda t: (order.get(t[1], 99), -t[2], t[0]))


def prepare(
    root: Path,
    min_count: int = 1,
    val_fraction: float = 0.1,
    seed: int = 0,
    workers: int | None = None,
    tag_db: Path | None = None,
    captioner: Callable[[list[Path]], list[list[str]]] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> Prepared:
    """Scan, validate (parallel decode), optionally caption, de-duplicate, build vocab, split."""
    root = Path(root)
    items = scan(root)
    if not items:
        raise InputFileError(root, "no images found (png, jpg, webp, bmp, gif, tiff)")
    log(f"{len(items)} images found; decoding to check them")
    problems: list[Problem] = []
    checked = parallel_map(_check, items, workers)
    readable: list[tuple[Item, str]] = []
    for item, err, digest in checked:
        if err:
            problems.append(Problem(item.rel, "unreadable", err))
        else:
            readable.append((item, digest))
    missing = [i for i, _d in readable if i.caption_path is None]
    if missing and captioner is not None:
        log(f"captioning {len(missing)} images that have no caption file")
        for item, tags in zip(missing, captioner([i.path for i in missing])):
            text = ", ".join(tags)
            item.caption_path = item.path.with_suffix(".txt")
            item.caption_path.write_text(text + "\n", encoding="utf-8")
            item.caption, item.tags = text, list(tags)
            problems.append(Problem(item.rel, "captioned", f"{len(tags)} tags written to {item.caption_path.name}"))
    seen: dict[str, str] = {}
    usable: list[Item] = []
    for item, digest in readable:
        if item.caption_path is None:
            problems.append(Problem(item.rel, "missing_caption", "no .txt or .caption file beside it"))
            continue
        if not item.tags:
            problems.append(Problem(item.rel, "empty_caption", f"{item.caption_path.name} has no tags"))
            continue
        if digest in seen:
            problems.append(Problem(item.rel, "duplicate", f"same file content as {seen[digest]}"))
            continue
        seen[digest] = item.rel
        usable.append(item)
    if not usable:
        raise TagLoomError(f"{root}: no usable images (every image is unreadable, uncaptioned or a duplicate)")
    tags = build_vocab(usable, min_count, tag_db)
    train, val = split(usable, val_fraction, seed)
    return Prepared(root, usable, train, val, tags, problems)


def write_selected_tags(path: Path, tags: list[tuple[str, int, int]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["tag_id", "name", "category", "count"])
        for i, (name, cat, count) in enumerate(tags):
            w.writerow([i, name, cat, count])


def write(prepared: Prepared, out: Path, min_count: int, val_fraction: float, seed: int, shards: int = 0) -> Path:
    """Write the prepared dataset; ``shards`` > 0 also packs the usable images and captions into
    tar shards of that many images (``out/shards/train-*.tar``, ``val-*.tar``), which the tagger
    trainer then reads instead of the original files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if shards > 0:
        import shutil

        from tagloom.training.data.shards import write_shards

        shutil.rmtree(out / "shards", ignore_errors=True)
        write_shards(prepared.train, out / "shards", "train", shards)
        write_shards(prepared.val, out / "shards", "val", shards)
    write_selected_tags(out / "selected_tags.csv", prepared.tags)
    (out / "split.json").write_text(json.dumps({
        "root": str(prepared.root.resolve()),
        "min_count": min_count, "val_fraction": val_fraction, "seed": seed,
        "train": [i.rel for i in prepared.train], "val": [i.rel for i in prepared.val],
    }, indent=1))
    kinds = Counter(p.kind for p in prepared.problems)
    (out / "report.json").write_text(json.dumps({
        "images_usable": len(prepared.items), "train": len(prepared.train), "val": len(prepared.val),
        "tags": len(prepared.tags), "problem_counts": dict(kinds),
        "problems": [p.__dict__ for p in prepared.problems],
    }, indent=1))
    return out


def load_split(prepared_dir: Path) -> tuple[Path, list[str], list[str]]:
    path = Path(prepared_dir) / "split.json"
    try:
        data = json.loads(path.read_text())
        return Path(data["root"]), list(data["train"]), list(data["val"])
    except (OSError, ValueError, KeyError) as e:
        raise InputFileError(path, f"not a prepared dataset split: {e}") from e


def read_selected_tags(path: Path) -> list[tuple[str, int, int]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [(r["name"], int(r["category"]), int(r.get("count") or 0)) for r in csv.DictReader(f)]
    except (OSError, KeyError, ValueError) as e:
        raise InputFileError(path, f"not a selected_tags.csv (tag_id,name,category,count): {e}") from e


def tagger_captioner(model: str, general_threshold: float | None = None, backend: str = "auto",
                     device: str = "auto") -> Callable[[list[Path]], list[list[str]]]:
    """Caption with the pack's tagger (tagloom.tagger): rating first, then general, character and
    artist tags above the model's thresholds, as raw Danbooru names.

    The hook is a plain callable (paths -> tag lists), so any tagger can be plugged in.
    """
    from tagloom.tagger import load_tagger

    def run(paths: list[Path]) -> list[list[str]]:
        tagger = load_tagger(model, backend=backend, device=device)
        thresholds = tagger.thresholds.with_overrides(general=general_threshold)
        out = []
        for result in tagger.tag_images(paths, thresholds=thresholds):
            tags = [result.rating] if result.rating else []
            tags += list(result.general) + list(result.character) + list(result.artist)
            out.append(tags)
        tagger.unload()
        return out

    return run
