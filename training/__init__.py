"""Trainers, imported as ``tagloom.training`` (never as a top-level ``training``; see
tagloom/training/__init__.py): datasets (``tagloom.training.data``), the timm tagger trainer
(``tagloom.training.tagger``), the SD LoRA trainer (``tagloom.training.lora``) and the subprocess
launcher used by the ComfyUI node (``tagloom.training.launcher``). Everything here imports
torch/diffusers lazily so the CLI stays quick."""
