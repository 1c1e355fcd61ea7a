"""One trainer shape (issue 13 item 6): the tagger and LoRA trainers are both training/trainer.py's
Trainer, with the same hooks; the tagger trainer gets the shared graceful stop and resume check."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="needs torch (the dev venv has it; the multi-Python check runs without)")

from train_data import make_dataset

TINY_ARGS = {"embed_dim": 32, "depth": 2, "num_heads": 2, "ref_feat_shape": [4, 4]}


def test_both_trainers_are_trainer_subclasses_with_the_same_hooks():
    from tagloom.training.lora.train import LoraTrainer
    from tagloom.training.tagger.train import TaggerTrainer
    from tagloom.training.trainer import Trainer

    assert issubclass(TaggerTrainer, Trainer) and issubclass(LoraTrainer, Trainer)
    for name in Trainer.HOOKS:
        assert callable(getattr(TaggerTrainer, name)) and callable(getattr(LoraTrainer, name)), name
    for name in ("_setup", "train_step", "save_state", "load_state", "fingerprint", "finish"):  # the abstract ones
        assert name in vars(TaggerTrainer) and name in vars(LoraTrainer), name
    assert "train" not in vars(TaggerTrainer) and "train" not in vars(LoraTrainer)  # one loop, the base's
    assert (TaggerTrainer.kind, LoraTrainer.kind) == ("tagger", "lora")


def test_tagger_stops_gracefully_and_refuses_a_resume_with_other_settings(tmp_path, capsys):
    from tagloom.errors import CancelledError, TagLoomError
    from tagloom.training.tagger.options import TaggerOptions
    from tagloom.training.tagger.train import TaggerTrainer

    make_dataset(tmp_path / "ds", 12)

    def opts(**kw):
        base = dict(dataset=tmp_path / "ds", out=tmp_path / "m", model_name="eva02_large_patch14_448", resolution=56,
                    model_args=dict(TINY_ARGS), epochs=3, batch_size=4, lr=3e-3, workers=0, onnx=False,
                    val_fraction=0.25, warmup=0.0)
        base.update(kw)
        return TaggerOptions(**base)

    tr = TaggerTrainer(opts(), on_epoch=lambda epoch, metrics: tr._on_signal(15, None))  # SIGTERM in epoch 1
    with pytest.raises(CancelledError):
        tr.train()
    last = tmp_path / "m" / "checkpoints" / "last.pt"
    state = torch.load(str(last), map_location="cpu", weights_only=True)
    assert state["epoch"] == 0 and state["step"] == tr.steps_per_epoch == tr.step
    with pytest.raises(TagLoomError, match="different settings"):
        TaggerTrainer(opts(resume=True, resolution=48)).train()
    again = TaggerTrainer(opts(resume=True))
    again._on_signal(15, None)  # stopped in the middle of epoch 2: epoch 1's state stays the resume point
    with pytest.raises(CancelledError):
        again.train()
    assert again.step == tr.step + 1
    assert "stopped in epoch 2: --resume starts it again" in capsys.readouterr().out
    assert torch.load(str(last), map_location="cpu", weights_only=True)["step"] == tr.step
