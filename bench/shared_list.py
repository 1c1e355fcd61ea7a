"""The shared 140k tag list (../shared/data) imported into a tag database, for the benchmarks."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def import_shared_list(db_path: Path) -> Path:
    """danbooru.csv, then the zh translations when present, into ``db_path`` when it holds no tags
    yet (a kept database is reused as it is); returns it."""
    sys.path.insert(0, str(REPO))
    from tagloom.tags import TagDB
    from tagloom.tags.importers import import_file

    with TagDB(db_path) as tdb:
        if tdb.count() == 0:
            import_file(tdb, SHARED / "danbooru.csv")
            if (SHARED / "tags-zh-translations.csv").is_file():
                import_file(tdb, SHARED / "tags-zh-translations.csv")
    return db_path


def benchmark_db(db: Path | None, folder: Path) -> Path | None:
    """The database a benchmark runs on: ``--db`` as given, else the shared list imported into
    ``folder/tags.sqlite``; None, after saying why, when the shared list is not beside the repository."""
    if db:
        return db.resolve()
    if not (SHARED / "danbooru.csv").is_file():
        print(f"shared data not found at {SHARED}: nothing to benchmark")
        return None
    return import_shared_list(folder / "tags.sqlite")
