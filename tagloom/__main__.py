"""`python -m tagloom` is the same CLI as the `tagloom` console script."""

from tagloom.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
