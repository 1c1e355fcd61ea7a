"""Cold start of tag completion over the full shared tag list (../shared/data/danbooru.csv, 140k tags).

Each figure comes from a fresh Python process (nothing cached in memory, as after a host start), run
``--runs`` times; the table gives the best and the median:
- build from the database: what a start costs without a usable snapshot (``Engine`` with the
  snapshot file removed: read the rows, build the classic index, then write the snapshot), and the
  write alone;
- load of the persisted snapshot (``Engine`` with ``tags.sqlite.search.npz`` beside the database);
- first query in a fresh process: ``autocomplete()`` (what the route runs) for one prefix, engine load
  included, with and without the snapshot; the import of ``tagloom.search.engine`` is listed apart.

    .venv/bin/python bench/cold_start.py [--runs 5] [--db PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
mode, db = sys.argv[2], sys.argv[3]
from tagloom.search import engine as E, persist
out = {"import": time.perf_counter() - t0}
if mode == "build":
    persist.path_for(db).unlink(missing_ok=True)
    t = time.perf_counter(); e = E.Engine(db); out["engine"] = time.perf_counter() - t
    assert e.source == "built", e.source
    t = time.perf_counter(); persist.save(db, e._stamp, e.state.export()); out["save"] = time.perf_counter() - t
elif mode == "load":
    t = time.perf_counter(); e = E.Engine(db); out["engine"] = time.perf_counter() - t
    assert e.source == "persisted", e.source
else:  # first query, "first-built" without the snapshot, "first-persisted" with it
    if mode == "first-built":
        persist.path_for(db).unlink(missing_ok=True)
    from tagloom.server.autocomplete import autocomplete
    t = time.perf_counter(); a = autocomplete("long ha", 10, None, db); out["query"] = time.perf_counter() - t
    assert a["suggestions"][0]["tag"] == "long_hair", a
    out["tags"] = E.get_engine(db).tag_count
    out["source"] = E.get_engine(db).source
print(json.dumps(out))
"""


def child(mode: str, db: Path, env: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, str(REPO), mode, str(db)], capture_output=True, text=True,
                       env=env, check=False)
    if r.returncode:
        raise SystemExit(f"{mode} run failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per figure")
    ap.add_argument("--db", type=Path, help="an existing tag database (default: import the shared list into a temp one)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tagloom-cold-"))
    try:
        return run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, tmp: Path) -> int:
    env = dict(os.environ, TAGLOOM_HOME=str(tmp), HF_HUB_OFFLINE="1")
    os.environ["TAGLOOM_HOME"] = str(tmp)
    from shared_list import benchmark_db

    db = benchmark_db(args.db, tmp)
    if db is None:
        return 1

    load_before = os.getloadavg()
    runs: dict[str, list[float]] = {}

    def add(label, value):
        runs.setdefault(label, []).append(value)

    for _ in range(args.runs):
        b = child("build", db, env)
        add("build from the database (rows + classic index + write the snapshot)", b["engine"])
        add("  of which: write the snapshot (again, alone)", b["save"])
        add("load the persisted snapshot", child("load", db, env)["engine"])
        f = child("first-built", db, env)
        add("first query, fresh process, no snapshot (build + query)", f["query"])
        p = child("first-persisted", db, env)
        assert p["source"] == "persisted", p
        add("first query, fresh process, snapshot present (load + query)", p["query"])
        add("  import tagloom.search.engine (before either)", p["import"])
    load_after = os.getloadavg()

    size = (db.with_name(db.name + ".search.npz")).stat().st_size
    print(f"tag list: {p['tags']:,} tags in {db}; snapshot {size / 1e6:.1f} MB")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print()
    print(f"| what ({args.runs} fresh processes each) | best | median |")
    print("| --- | --- | --- |")
    for label, values in runs.items():
        print(f"| {label} | {min(values):.3f} s | {statistics.median(values):.3f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
