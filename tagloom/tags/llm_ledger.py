"""The LLM answer ledger: every answer the LLM tools paid for, kept in the tag database file.

Why a ledger and not only the ``tags`` columns: an answered batch is written here in ONE transaction
the moment it arrives, before it is applied to the tags. A run killed at any point therefore loses
nothing it paid for: the next run first applies answers that were stored but not yet applied, then
asks only for tags that have no answer. ``(task, tag, prompt_version)`` is the primary key, so a tag
is answered at most once per task and prompt version, whatever happens.

``llm_requests`` keeps one row per request (tokens, tags asked, tags answered, error) for cost
reports and for the tests' "never paid twice" check.

This module only adds tables beside ``tagloom.tags.db``'s schema; it never changes that schema.
"""

from __future__ import annotations

import json
import time
from typing import Iterable

from tagloom.tags.db import TagDB, canonical

SCHEMA = """
CREATE TABLE IF NOT EXISTS llm_answers (
    task TEXT NOT NULL,
    tag TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    result TEXT NOT NULL,
    provider TEXT,
    model TEXT,
    at REAL NOT NULL,
    applied INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (task, tag, prompt_version)
);
CREATE INDEX IF NOT EXISTS llm_answers_unapplied ON llm_answers(task, applied);
CREATE TABLE IF NOT EXISTS llm_requests (
    id INTEGER PRIMARY KEY,
    task TEXT NOT NULL,
    provider TEXT,
    model TEXT,
    tags_asked INTEGER NOT NULL,
    tags_answered INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    at REAL NOT NULL
);
"""


class Ledger:
    def __init__(self, db: TagDB):
        self.db = db
        with db._lock:
            db.conn.executescript(SCHEMA)

    def record(
        self,
        task: str,
        prompt_version: str,
        provider: str,
        model: str,
        answers: Iterable[dict],
        tags_asked: int,
        usage: dict | None = None,
        error: str | None = None,
    ) -> list[dict]:
        """Store a request and its valid answers atomically. Returns the answers newly stored (an
        answer for a tag that already has one is ignored: the first answer wins, never a second)."""
        usage = usage or {}
        now = time.time()
        stored = []
        with self.db._lock, self.db.conn:
            for a in answers:
                cur = self.db.conn.execute(
                    "INSERT OR IGNORE INTO llm_answers(task, tag, prompt_version, result, provider, model, at) VALUES (?,?,?,?,?,?,?)",
                    (task, canonical(a["tag"]), prompt_version, json.dumps(a, ensure_ascii=False), provider, model, now),
                )
                if cur.rowcount:
                    stored.append(a)
            self.db.conn.execute(
                """INSERT INTO llm_requests(task, provider, model, tags_asked, tags_answered, prompt_tokens,
                   completion_tokens, error, at) VALUES (?,?,?,?,?,?,?,?,?)""",
                (task, provider, model, tags_asked, len(stored), usage.get("prompt_tokens", 0),
                 usage.get("completion_tokens", 0), error, now),
            )
        return stored

    def mark_applied(self, task: str, prompt_version: str, tags: Iterable[str]) -> None:
        with self.db._lock, self.db.conn:
            self.db.conn.executemany(
                "UPDATE llm_answers SET applied=1 WHERE task=? AND prompt_version=? AND tag=?",
                [(task, prompt_version, canonical(t)) for t in tags],
            )

    def unapplied(self, task: str) -> list[dict]:
        with self.db._lock:
            rows = self.db.conn.execute(
                "SELECT result, provider, model, prompt_version, at FROM llm_answers WHERE task=? AND applied=0", (task,)
            ).fetchall()
        return [dict(json.loads(r[0]), _provider=r[1], _model=r[2], _prompt_version=r[3], _at=r[4]) for r in rows]

    def answered(self, task: str, prompt_version: str | None = None) -> set[str]:
        sql = "SELECT tag FROM llm_answers WHERE task=?"
        params: tuple = (task,)
        if prompt_version:
            sql += " AND prompt_version=?"
            params += (prompt_version,)
        with self.db._lock:
            return {r[0] for r in self.db.conn.execute(sql, params)}

    def answer(self, task: str, tag: str) -> dict | None:
        with self.db._lock:
            row = self.db.conn.execute(
                "SELECT result FROM llm_answers WHERE task=? AND tag=? ORDER BY at DESC LIMIT 1", (task, canonical(tag))
            ).fetchone()
        return json.loads(row[0]) if row else None

    def answer_counts(self, task: str) -> dict[str, int]:
        with self.db._lock:
            return {r[0]: r[1] for r in self.db.conn.execute("SELECT tag, COUNT(*) FROM llm_answers WHERE task=? GROUP BY tag", (task,))}

    def usage(self, task: str | None = None) -> dict:
        sql = "SELECT COUNT(*), COALESCE(SUM(prompt_tokens),0), COALESCE(SUM(completion_tokens),0), COALESCE(SUM(tags_answered),0) FROM llm_requests"
        params: tuple = ()
        if task:
            sql += " WHERE task=?"
            params = (task,)
        with self.db._lock:
            n, p, c, a = self.db.conn.execute(sql, params).fetchone()
        return {"requests": n, "prompt_tokens": p, "completion_tokens": c, "tags_answered": a}
