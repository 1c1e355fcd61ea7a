"""Reading the small JSON files users hand us (config.json, threshold.json) with errors that name
the file and the problem."""

from __future__ import annotations

import json
from pathlib import Path

from tagloom.errors import InputFileError


def read_json_object(path: str | Path, missing: str) -> dict:
    """The JSON object in ``path``; InputFileError when it is missing (``missing`` says what the file
    is for), not JSON, or not an object."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, f"missing ({missing})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputFileError(path, f"is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise InputFileError(path, f"must be a JSON object, not {type(data).__name__}")
    return data
