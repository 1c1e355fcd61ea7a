"""Trainers: datasets (``training.data``), the timm tagger trainer (``training.tagger``), the SD LoRA
trainer (``training.lora``) and the subprocess launcher used by the ComfyUI node
(``training.launcher``). Everything here imports torch/diffusers lazily so the CLI stays quick."""
