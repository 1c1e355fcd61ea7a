"""``tomllib`` on Python 3.11+, the ``tomli`` package (same API) on 3.10."""

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pyproject/requirements add tomli there
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["tomllib"]
