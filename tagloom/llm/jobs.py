"""Resumable, batched, concurrent LLM jobs over tags (categorize, describe).

A job asks a provider about tags in batches keyed by tag, stores every valid answer in the ledger the
moment its batch returns (``tagloom.tags.llm_ledger``), applies it to the tag database, and retries
alone every tag the model skipped or answered out of schema. Killing the process at any point loses
nothing: :func:`run_task` first applies stored-but-unapplied answers, and ``pending`` never includes a
tag that already has an answer.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

from tagloom.errors import CancelledError
from tagloom.llm import categories as cats
from tagloom.llm.providers import FREE_STRING_MAX, LLMError, LLMOutputError, Provider, Usage
from tagloom.tags.db import TagDB, canonical
from tagloom.tags.llm_ledger import Ledger

log = logging.getLogger(__name__)


@dataclass
class Task:
    """What to ask about each tag and what to do with a valid answer."""

    name: str
    prompt_version: str
    system: str
    item_schema: Callable[[], dict]
    validate: Callable[[str, object], dict | None]
    apply: Callable[[TagDB, dict, str, str], None]
    pending_where: str  # SQL condition on ``tags`` for tags that still need this task
    out_tokens_per_tag: int = 40

    def user_prompt(self, tags: list[str]) -> str:
        return "Tags:\n" + "\n".join(tags)


def _apply_category(db: TagDB, a: dict, source: str, prompt_version: str) -> None:
    db.set_pack_category(a["tag"], a["main_category"], a["sub_category"], a["confidence"], source, prompt_version)


CATEGORIZE = Task(
    name="categorize",
    prompt_version=cats.PROMPT_VERSION,
    system=cats.SYSTEM_PROMPT,
    item_schema=cats.item_schema,
    validate=cats.validate_item,
    apply=_apply_category,
    pending_where="main_category IS NULL",
    out_tokens_per_tag=40,
)


DESCRIBE_PROMPT_VERSION = "desc-v1"
DESCRIBE_SYSTEM = (
    "You explain Danbooru image tags. For every tag you are given, write a one-line English "
    "description of what it shows in an image (at most 15 words, no tag name repeated) and its "
    "usual Chinese name (简体中文, a few characters). Answer every tag, exactly as written, once."
)


def _describe_schema() -> dict:
    return {
        "type": "object",
        "properties": {"description": {"type": "string"}, "zh": {"type": "string"}},
        "required": ["description", "zh"],
        "additionalProperties": False,
    }


def _validate_describe(tag: str, value) -> dict | None:
    if not isinstance(value, dict):
        return None
    desc = value.get("description")
    zh = value.get("zh")
    if not isinstance(desc, str) or not desc.strip() or not isinstance(zh, str):
        return None
    return {"tag": tag, "description": " ".join(desc.split())[:300], "zh": zh.strip()[:40]}


def _apply_describe(db: TagDB, a: dict, source: str, prompt_version: str) -> None:
    db.set_description(a["tag"], a["description"], source)
    if a["zh"]:
        db.add_translations([(a["tag"], "zh", a["zh"])])


DESCRIBE = Task(
    name="describe",
    prompt_version=DESCRIBE_PROMPT_VERSION,
    system=DESCRIBE_SYSTEM,
    item_schema=_describe_schema,
    validate=_validate_describe,
    apply=_apply_describe,
    pending_where="description IS NULL",
    out_tokens_per_tag=45,
)

TASKS = {t.name: t for t in (CATEGORIZE, DESCRIBE)}


def pending_tags(
    db: TagDB,
    task: Task,
    danbooru_categories: tuple[int, ...] | None = (0,),
    min_posts: int | None = None,
    max_posts: int | None = None,
    limit: int | None = None,
) -> list[str]:
    """Tags that still need ``task``, most-used first, excluding any with a stored answer."""
    ledger = Ledger(db)
    conds = [task.pending_where]
    params: list = []
    if danbooru_categories is not None:
        conds.append(f"category IN ({','.join('?' * len(danbooru_categories))})")
        params += list(danbooru_categories)
    if min_posts is not None:
        conds.append("post_count >= ?")
        params.append(min_posts)
    if max_posts is not None:
        conds.append("post_count < ?")
        params.append(max_posts)
    answered = ledger.answered(task.name, task.prompt_version)
    sql = f"SELECT name FROM tags WHERE {' AND '.join(conds)} ORDER BY post_count DESC, name"
    out = []
    with db._lock:
        rows = db.conn.execute(sql, params).fetchall()
    for (name,) in rows:
        if name in answered:
            continue
        out.append(name)
        if limit is not None and len(out) >= limit:
            break
    return out


@dataclass
class RunReport:
    task: str
    asked: int = 0
    answered: int = 0
    recovered: int = 0  # answers stored by an earlier, interrupted run and applied now
    retried_alone: int = 0
    failed: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)

    def as_dict(self) -> dict:
        return {
            "task": self.task,
            "asked": self.asked,
            "answered": self.answered,
            "recovered": self.recovered,
            "retried_alone": self.retried_alone,
            "failed": self.failed,
            "usage": self.usage.as_dict(),
        }


def apply_stored(db: TagDB, task: Task) -> int:
    """Apply answers a killed run stored but did not apply. Returns how many."""
    ledger = Ledger(db)
    rows = ledger.unapplied(task.name)
    by_version: dict[str, list[str]] = {}
    for a in rows:
        src = f"llm:{a['_model']}"
        task.apply(db, a, src, a["_prompt_version"])
        by_version.setdefault(a["_prompt_version"], []).append(a["tag"])
    for version, tags in by_version.items():
        ledger.mark_applied(task.name, version, tags)
    return len(rows)


def run_task(
    db: TagDB,
    task: Task,
    provider: Provider,
    tags: list[str],
    batch_size: int = 50,
    concurrency: int = 1,
    single_attempts: int = 2,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunReport:
    """Ask ``provider`` about ``tags`` and store the answers. See the module docstring.

    A provider that keeps failing (LLMError after its retries) stops the run with that error once
    the batches in flight have been stored; every answer received so far is kept.
    """
    ledger = Ledger(db)
    report = RunReport(task=task.name)
    report.recovered = apply_stored(db, task)
    already = ledger.answered(task.name, task.prompt_version)
    todo = [canonical(t) for t in dict.fromkeys(tags) if canonical(t) not in already]
    report.asked = len(todo)
    batch_size = max(1, int(batch_size))
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    source = f"llm:{provider.model}"
    lock = threading.Lock()
    singles: list[str] = []
    done = [0]

    def persist(answers: list[dict], asked: int, usage: Usage | None, error: str | None = None) -> None:
        stored = ledger.record(
            task.name, task.prompt_version, provider.kind, provider.model, answers, asked,
            usage.as_dict() if usage else None, error,
        )
        for a in stored:
            task.apply(db, a, source, task.prompt_version)
        ledger.mark_applied(task.name, task.prompt_version, [a["tag"] for a in stored])
        with lock:
            report.answered += len(stored)
            done[0] += len(stored)
        if progress:
            progress(done[0], len(todo))

    def ask(batch: list[str]) -> list[str]:
        """One request; returns the tags that need to be asked again alone."""
        schema = _keyed(task, batch)
        # a cap, not a cost: twice the expected answer plus a whole bounded reason per tag (a tiny
        # model fills it with one token per character), so a verbose model is not cut mid-JSON
        max_tokens = 64 + (2 * task.out_tokens_per_tag + FREE_STRING_MAX) * len(batch)
        try:
            res = provider.chat_json(task.system, task.user_prompt(batch), schema, max_tokens=max_tokens)
        except LLMOutputError as e:
            # answers that did not parse were still paid for: their tokens go into the ledger
            with lock:
                if e.usage:
                    report.usage.add(e.usage)
            persist([], len(batch), e.usage, error=str(e)[:300])
            return list(batch)
        except LLMError as e:
            if e.usage and e.usage.requests:
                with lock:
                    report.usage.add(e.usage)
                persist([], len(batch), e.usage, error=str(e)[:300])
            raise
        with lock:
            report.usage.add(res.usage)
        got = {canonical(k): v for k, v in res.data.items()} if isinstance(res.data, dict) else {}
        answers, missing = [], []
        for t in batch:
            item = task.validate(t, got.get(t))
            (answers if item else missing).append(item or t)
        persist(answers, len(batch), res.usage)
        if missing:
            log.info("%s: %d of %d tags skipped or out of schema; asking them alone", task.name, len(missing), len(batch))
        return missing

    def run_pool(jobs: list[list[str]]) -> list[str]:
        again: list[str] = []
        error: BaseException | None = None
        with ThreadPoolExecutor(max_workers=max(1, int(concurrency))) as pool:
            it = iter(jobs)
            running = set()
            stopped = False
            while True:
                while not stopped and error is None and len(running) < max(1, int(concurrency)):
                    if should_stop and should_stop():
                        stopped = True
                        break
                    job = next(it, None)
                    if job is None:
                        break
                    running.add(pool.submit(ask, job))
                if not running:
                    break
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    try:
                        again.extend(f.result())
                    except LLMError as e:
                        error = error or e
            if error is not None:
                raise error
            if stopped:
                raise CancelledError(f"{task.name}: stopped; {report.answered} answers stored, the rest stays pending")
        return again

    singles = run_pool(batches)
    for attempt in range(single_attempts):
        if not singles:
            break
        report.retried_alone += len(singles)
        singles = run_pool([[t] for t in singles])
    report.failed = singles
    return report


def _keyed(task: Task, batch: list[str]) -> dict:
    return cats.keyed_schema(batch, task.item_schema())
