"""Tag knowledge base: the SQLite tag database and its importers/exporters."""

from tagloom.tags.db import DANBOORU_CATEGORIES, TagDB, canonical

__all__ = ["DANBOORU_CATEGORIES", "TagDB", "canonical"]
