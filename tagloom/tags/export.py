"""``tagloom tags export``: every tag with all its fields, as JSON lines (round-trips through
``tagloom tags import``) or as a CSV with a header."""

from __future__ import annotations

import csv
import json
from typing import TextIO

from tagloom.tags.db import DANBOORU_CATEGORIES, TagDB

FIELDS = [
    "name", "category", "category_name", "post_count", "aliases", "translations", "description",
    "description_source", "main_category", "sub_category", "category_confidence", "category_source",
    "category_prompt_version", "category_updated_at",
]


def _record(tag: dict) -> dict:
    d = {k: tag.get(k) for k in FIELDS}
    d["category_name"] = DANBOORU_CATEGORIES.get(tag.get("category"))
    return d


def export(db: TagDB, out: TextIO, fmt: str = "jsonl") -> int:
    n = 0
    if fmt == "jsonl":
        for tag in db.iter_tags():
            out.write(json.dumps(_record(tag), ensure_ascii=False) + "\n")
            n += 1
    elif fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(FIELDS)
        for tag in db.iter_tags():
            d = _record(tag)
            d["aliases"] = ",".join(d["aliases"] or [])
            d["translations"] = json.dumps(d["translations"] or {}, ensure_ascii=False)
            w.writerow(["" if d[k] is None else d[k] for k in FIELDS])
            n += 1
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    return n
