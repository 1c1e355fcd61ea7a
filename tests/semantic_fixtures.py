"""A small tag database for the semantic search tests (test_search_semantic, test_search_numpy_store)."""

from __future__ import annotations

from tagloom.tags import TagDB

# A small slice of Danbooru. Descriptions are what the Danbooru wiki importer stores; the
# translations are the ones in ../shared/data/tags-zh-translations.csv.
TAGS = [
    ("1girl", 0, 6008644, ["1girls"], None, None),
    ("long_hair", 0, 4350743, ["/lh", "longhair"], "长发", None),
    ("twintails", 0, 904712, ["/tt", "twin_tails"], "双马尾", "Hair tied into two ponytails, one on each side of the head."),
    ("ponytail", 0, 599087, ["pony_tail"], "马尾", "Hair gathered into one tail at the back of the head."),
    ("side_ponytail", 0, 176822, [], "侧马尾", None),
    ("braid", 0, 700000, ["braids"], "辫子", None),
    ("cat_ears", 0, 900000, ["nekomimi"], "猫耳", None),
    ("fox_girl", 0, 75939, ["kitsune_girl"], "狐娘", "A girl with fox ears and a fox tail."),
    ("glasses", 0, 600000, ["spectacles"], "眼镜", None),
    ("school_uniform", 0, 1000000, ["seifuku"], "校服", None),
    ("sunset", 0, 120000, [], "日落", None),
    ("hatsune_miku", 4, 150000, ["miku"], "初音未来", None),
    ("highres", 5, 5256195, ["hires"], "高分辨率", None),
    ("wlop", 1, 900, [], None, None),
]


def make_db(path, tags=TAGS):
    with TagDB(path) as db:
        db.upsert_tags({"name": n, "category": c, "post_count": p, "description": d} for n, c, p, _, _, d in tags)
        db.add_aliases((a, n) for n, _, _, al, _, _ in tags for a in al)
        db.add_translations((n, "zh", z) for n, _, _, _, z, _ in tags if z)
    return path
