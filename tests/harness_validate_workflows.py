"""Ask a running ComfyUI (the harness, ../shared/tools/comfy_harness.py start .:ComfyUI-TagLoom) to
validate every shipped API workflow: POST /prompt answers validation errors at once; a valid prompt
is queued and then cancelled (interrupt + clear queue), so nothing long runs. Prints one line per
workflow; exit 1 when any fails validation. Usage: python tests/harness_validate_workflows.py [PORT]
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def post(port: int, path: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            text = r.read().decode() or "{}"
            return r.status, json.loads(text) if text.strip().startswith("{") else {}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode() or "{}")


def main(port: int = 8199) -> int:
    bad = 0
    for path in sorted((REPO / "example_workflows").glob("*_api.json")):
        status, answer = post(port, "/prompt", {"prompt": json.loads(path.read_text())})
        if status == 200 and not answer.get("node_errors"):
            print(f"{path.name}: valid")
        else:
            bad += 1
            errors = answer.get("node_errors") or answer.get("error")
            print(f"{path.name}: INVALID {json.dumps(errors)[:600]}")
        post(port, "/interrupt", {})
        post(port, "/queue", {"clear": True})
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8199))
