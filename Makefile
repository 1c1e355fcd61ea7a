# Two commands: `make setup` (once), then `make test`. The main job: `.venv/bin/tagloom tag IMAGE`.
PY ?= python3
VENV ?= .venv

.PHONY: setup test bench

setup:
	bash .ci/setup-venv $(VENV)

test:
	$(VENV)/bin/python -m pytest -q

bench:
	$(VENV)/bin/python bench/tagger.py
