"""``tagloom.training``: the trainers, whose code lives in the repository's top-level ``training/``
folder (datasets, the tagger and LoRA trainers, the launcher the Train node uses).

They are part of the ``tagloom`` namespace and never a top-level package named ``training``, which
any other package or ComfyUI node pack could shadow. An installed wheel maps ``training/`` straight
onto this package (``[tool.setuptools.package-dir]`` in pyproject.toml), so this file is not part of
it. Run from a checkout (ComfyUI's custom_nodes, the tests, an editable install), this file stands in
for the package: it points the package's ``__path__`` at ``training/`` and runs that folder's
``__init__.py``, so ``import tagloom.training.lora.train`` loads ``training/lora/train.py``.
"""

from pathlib import Path as _Path

_FOLDER = _Path(__file__).resolve().parents[2] / "training"
__path__ = [str(_FOLDER)]
__file__ = str(_FOLDER / "__init__.py")
with open(__file__, encoding="utf-8") as _f:
    exec(compile(_f.read(), __file__, "exec"))  # noqa: S102 - the package's own __init__
del _f, _Path
