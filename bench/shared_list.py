"""The shared 140k tag list (../shared/data) imported into a tag database, for the benchmarks."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def import_shared_list(db_path: Path) -> Path:
    """danbooru.csv, then the zh translations when present, into ``db_path``; returns it."""
    sys.path.insert(0, str(REPO))
    from tagloom.tags import TagDB
    from tagloom.tags.importers import import_file

    with TagDB(db_path) as tdb:
        import_file(tdb, SHARED / "danbooru.csv")
        if (SHARED / "tags-zh-translations.csv").is_file():
            import_file(tdb, SHARED / "tags-zh-translations.csv")
    return db_path
