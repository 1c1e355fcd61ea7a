"""Command-line options shared by several commands (no command here: the leading underscore keeps
the CLI's discovery from looking for ``register``)."""

from __future__ import annotations


def add_threshold_format_options(p) -> None:
    """Thresholds and tag-string formatting, as `tagloom tag` and `tagloom caption` take them.

    Every default is None (or empty) = "keep the model's / the configured value", so a command
    passes the values straight to ``Thresholds.with_overrides`` / ``FormatOptions.with_overrides``.
    """
    p.add_argument("--threshold-json", default=None, help="a threshold.json overriding the model's own")
    p.add_argument("--general-threshold", type=float, default=None, help="score a general tag needs (default: the model's threshold.json, else 0.35)")
    p.add_argument("--character-threshold", type=float, default=None, help="score a character tag needs (default: the model's, else 0.85)")
    p.add_argument("--artist-threshold", type=float, default=None, help="score an artist tag needs (default: the model's)")
    p.add_argument("--caption-threshold", type=float, default=None, help="threshold for the caption string only (default: the group thresholds)")
    p.add_argument("--tags-threshold", type=float, default=None, help="threshold for the tags string only (default: the group thresholds)")
    p.add_argument("--mcut", action="append", choices=["general", "character", "artist"], default=[],
                   help="MCut automatic threshold for this group (repeatable)")
    p.add_argument("--keep-underscores", action="store_true", help="write long_hair, not long hair")
    p.add_argument("--no-escape", action="store_true", help="do not escape parentheses")
    p.add_argument("--exclude", default=None, help="comma-separated tags never written")
    p.add_argument("--include", default=None, help="comma-separated tags always written first (e.g. a trigger word)")
    p.add_argument("--max-tags", type=int, default=None, help="at most this many tags per string (0 = all)")
    p.add_argument("--trailing-comma", action="store_true", help="end each tag string with a comma")
