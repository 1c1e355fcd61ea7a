"""Semantic index (placeholder until the index build lands)."""

from __future__ import annotations


def index_stamp(db_path, embedder=None):
    return None


class SemanticIndex:
    @classmethod
    def open(cls, db_path, embedder=None):
        return None
