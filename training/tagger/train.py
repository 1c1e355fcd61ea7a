"""The tagger trainer: ``TaggerTrainer``, the hooks of training/trainer.py's ``Trainer`` (the shape
the LoRA trainer shares), and ``train_tagger(opts)``, which runs it.

Runs unchanged as one process or under ``torchrun``/``accelerate launch`` (it reads WORLD_SIZE,
RANK and LOCAL_RANK and wraps the model in DDP). Determinism is what makes resume exact: the data
order and every random draw of an epoch derive from (seed, epoch), and a checkpoint is written at
the end of every epoch, so a run killed in epoch k and resumed reruns epoch k from the same state
and ends with the same weights as an uninterrupted run (on the same device and settings).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from tagloom.errors import InputFileError, TagLoomError
from tagloom.training.progress import is_main_process, log, report
from tagloom.training.tagger.options import TaggerOptions
from tagloom.training.trainer import Trainer

DEFAULT_MEAN = (0.5, 0.5, 0.5)  # the wd taggers' normalisation (not timm's CLIP mean/std)
DEFAULT_STD = (0.5, 0.5, 0.5)


# --- data ---------------------------------------------------------------------------------------
def load_dataset(opts: TaggerOptions):
    """(train [(source, caption)], val [(source, caption)], tags [(name, category, count)]).

    ``opts.dataset`` may be a folder prepared by `tagloom train prepare` (split.json +
    selected_tags.csv, optionally ``shards/`` tar shards, read instead of the original files) or a
    raw dataset folder, which is prepared here into OUT/dataset. A source is an image path or a
    tagloom.training.data.shards.ShardMember.
    """
    from tagloom.training.data import prepare as prep

    ds = Path(opts.dataset)
    prepared_dir = Path(opts.out) / "dataset"
    if (ds / "split.json").is_file() and (ds / "selected_tags.csv").is_file():
        prepared_dir = ds
    elif not (opts.resume and (prepared_dir / "split.json").is_file()):  # resume keeps the first split
        result = prep.prepare(ds, opts.min_count, opts.val_fraction, opts.seed, log=log)
        for p in result.problems:
            log(f"{p.kind}: {p.path}: {p.detail}")
        tags = result.tags
        if is_main_process():
            prep.write(result, prepared_dir, opts.min_count, opts.val_fraction, opts.seed)
        return ([(i.path, i.caption or "") for i in result.train], [(i.path, i.caption or "") for i in result.val], tags)
    tags = prep.read_selected_tags(prepared_dir / "selected_tags.csv")
    shards = prepared_dir / "shards"
    if shards.is_dir():
        from tagloom.training.data.shards import read_shards

        train = [(m, text) for m, text, _k in read_shards(sorted(shards.glob("train-*.tar")))]
        val = [(m, text) for m, text, _k in read_shards(sorted(shards.glob("val-*.tar")))]
        log(f"reading {len(train)} + {len(val)} images from the tar shards in {shards}")
        return train, val, tags
    root, train_rels, val_rels = prep.load_split(prepared_dir)
    return [(root / r, _caption(root / r)) for r in train_rels], [(root / r, _caption(root / r)) for r in val_rels], tags


def _caption(path: Path) -> str:
    from tagloom.training.data.dataset import CAPTION_EXTS, read_caption

    for ext in CAPTION_EXTS:
        if path.with_suffix(ext).is_file():
            return read_caption(path.with_suffix(ext))
    return ""


def _labels(captions: list[str], index: dict[str, int]) -> list[list[int]]:
    from tagloom.training.data.dataset import canonical_tag, split_tags
    from tagloom.training.data.prepare import RATING_TAGS

    out = []
    for caption in captions:
        names = {RATING_TAGS.get(canonical_tag(t), canonical_tag(t)) for t in split_tags(caption)}
        out.append(sorted(index[n] for n in names if n in index))
    return out


# --- model --------------------------------------------------------------------------------------
def create_network(opts: TaggerOptions, num_classes: int):
    """(model, config.json dict). Models that take no img_size (CNNs) are built without it."""
    import timm

    kwargs = dict(opts.model_args)
    pretrained = opts.init == "timm" or (opts.init or "").startswith("hf-hub:")
    name = opts.init if (opts.init or "").startswith("hf-hub:") else opts.model_name
    if opts.model_name not in timm.list_models():
        from tagloom.errors import TagLoomError

        raise TagLoomError(f"--model-name {opts.model_name!r}: not a timm model name (see timm.list_models())")
    if opts.resolution:
        size = opts.resolution
    else:  # the model's own input size, read from its registry entry (no weights built)
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(opts.model_name)
        size = int(cfg.input_size[-1]) if cfg is not None else 224
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, img_size=size, **kwargs)
        kwargs["img_size"] = size
    except TypeError:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    config = {
        "architecture": opts.model_name,
        "num_classes": num_classes,
        "model_args": kwargs,
        "pretrained_cfg": {
            "input_size": [3, size, size], "mean": list(DEFAULT_MEAN), "std": list(DEFAULT_STD),
            "interpolation": "bicubic", "crop_pct": 1.0, "channel_order": "BGR",
        },
    }
    if opts.init and not pretrained:
        init_from(model, Path(opts.init), opts)
    return model, config


def _read_weights(path: Path) -> dict:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def init_from(model, path: Path, opts: TaggerOptions) -> None:
    """Load weights into the model: same-shaped tensors are taken, the rest (usually the head,
    whose width is our vocabulary) keep their fresh init. From a wd model folder with its own
    selected_tags.csv, head rows of tags both vocabularies share are copied by name."""
    import importlib

    folder_tags = None
    if path.is_dir():
        if (path / "selected_tags.csv").is_file():
            from tagloom.training.data.prepare import read_selected_tags

            folder_tags = [t[0] for t in read_selected_tags(path / "selected_tags.csv")]
        path = path / "model.safetensors"
    if not path.is_file():
        raise InputFileError(path, "init weights not found")
    try:
        state = _read_weights(path)
    except Exception as e:
        raise InputFileError(path, f"cannot be read as weights: {e}") from e
    state = {k.removeprefix("module."): v for k, v in state.items()}
    module = importlib.import_module(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:  # resizes position embeddings to our image size, renames old layouts
            state = filter_fn(state, model)
        except Exception as e:
            log(f"init: timm's checkpoint filter failed ({e}); loading as is")
    own = model.state_dict()
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_names = {n for n, p in model.named_parameters() if head is not None and any(p is q for q in head.parameters())}
    take = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    tag_names = getattr(opts, "_tag_names", None)
    if folder_tags and tag_names:
        index = {t: i for i, t in enumerate(folder_tags)}
        for k in head_names:
            if k in state and k not in take and state[k].shape[0] == len(folder_tags):
                merged = own[k].clone()
                for j, name in enumerate(tag_names):
                    if name in index:
                        merged[j] = state[k][index[name]]
                take[k] = merged
    missing = [k for k in own if k not in take]
    model.load_state_dict(take, strict=False)
    log(f"init: {len(take)} tensors from {path}; {len(missing)} fresh ({', '.join(missing[:4])}{'...' if len(missing) > 4 else ''})")


# --- schedule -----------------------------------------------------------------------------------
def lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


# --- distributed --------------------------------------------------------------------------------
def resolve_device(device_opt: str, local_rank: int, cuda_devices: int):
    """The torch device of this process. A CUDA device without an index ("auto", "cuda") is the
    process's own GPU, cuda:LOCAL_RANK: torch.cuda.set_device rejects an index-less device, and
    under torchrun every rank on cuda:0 would make NCCL fail (duplicate GPU). More processes than
    visible GPUs (the node's `gpus` set too high) is a clear error, not "invalid device ordinal"."""
    import torch

    if device_opt == "auto":
        device = torch.device(f"cuda:{local_rank}" if cuda_devices else "cpu")
    else:
        device = torch.device(device_opt)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
    if device.type == "cuda" and device.index >= cuda_devices:
        raise TagLoomError(f"device {device}: only {cuda_devices} CUDA device(s) visible; start at most one "
                           "training process per GPU (gpus / --nproc_per_node)")
    return device


def setup_distributed(device_opt: str):
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_opt, local, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device, world, int(os.environ.get("RANK", "0"))


def val_shard(n: int, world: int, rank: int) -> list[int]:
    """This rank's validation images: each image once over all ranks (no padding: padded
    duplicates would count twice in the gathered metrics and in threshold calibration)."""
    return list(range(rank, n, world))


def shard(indices: list[int], world: int, rank: int) -> list[int]:
    if world == 1:
        return indices
    per = math.ceil(len(indices) / world)
    padded = indices + indices[: per * world - len(indices)]
    return padded[rank::world]


# --- loop ---------------------------------------------------------------------------------------
def _autocast(device, precision: str):
    import contextlib

    import torch

    if precision in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def _predict(model, loader, device, precision):
    import numpy as np
    import torch

    probs, targets = [], []
    model.eval()
    with torch.no_grad():
        for x, y in loader:
            with _autocast(device, precision):
                logits = model(x.to(device, non_blocking=True))
            probs.append(torch.sigmoid(logits.float()).cpu())
            targets.append(y)
    model.train()
    if not probs:
        # a rank with no validation images still gathers: keep the class axis so concatenation works
        n = loader.dataset.num_classes
        return np.zeros((0, n), dtype=np.float32), np.zeros((0, n), dtype=np.float32)
    return torch.cat(probs).numpy(), torch.cat(targets).numpy()


def _gather(array, world):
    import numpy as np
    import torch

    if world == 1:
        return array
    parts = [None] * world
    torch.distributed.all_gather_object(parts, array)
    return np.concatenate(parts)


def _rng_state():
    import random

    import numpy as np
    import torch

    return {"torch": torch.get_rng_state(), "python": repr(random.getstate()), "numpy": repr(np.random.get_state())}


class TaggerTrainer(Trainer):
    """The hooks of training/trainer.py's Trainer over a timm model. A step is one optimizer step
    (``grad_accum`` batches); an epoch ends with validation, ``best.safetensors`` when it improved and
    the resumable state ``checkpoints/last.pt``. Resume continues after the last finished epoch: a
    stop in the middle of an epoch keeps the previous epoch's state. ``on_epoch(epoch, metrics)`` is
    called after each epoch's checkpoint (tests use it to simulate a kill)."""

    kind = "tagger"
    state_file = "last.pt"
    fingerprint_fields = "model, resolution, tag list"

    def __init__(self, opts: TaggerOptions, on_epoch: Callable[[int, dict], None] | None = None):
        import torch

        super().__init__(opts)
        self.on_epoch = on_epoch
        self.out = Path(opts.out)
        self.state_dir = self.out / "checkpoints"
        if is_main_process():
            self.state_dir.mkdir(parents=True, exist_ok=True)
        self.own_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
        self.device, self.world, self.rank = setup_distributed(opts.device)
        self._resolve_precision(off="fp32")
        self.epoch = 0  # the next epoch to run
        self.best_f1, self.bad_epochs, self.history = -1.0, 0, []
        self.stopped_early = False
        self._iter = None  # the current epoch's batches; None between epochs
        self._saved_epoch: int | None = None
        self._setup()

    # --- setup --------------------------------------------------------------------------------
    def _setup(self):
        import torch

        from tagloom.training.tagger.data import TaggerDataset
        from tagloom.training.tagger.losses import make_loss

        opts, device, world, rank = self.opts, self.device, self.world, self.rank
        train_items, val_items, self.tags = load_dataset(opts)
        names = self.names = [t[0] for t in self.tags]
        self.categories = [t[1] for t in self.tags]
        index = {n: i for i, n in enumerate(names)}
        opts._tag_names = names  # for head-row transfer in init_from
        torch.manual_seed(opts.seed)
        model, self.config = create_network(opts, len(names))
        self.size = self.config["pretrained_cfg"]["input_size"][-1]
        mean, std = self.config["pretrained_cfg"]["mean"], self.config["pretrained_cfg"]["std"]
        if opts.gradient_checkpointing and hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
        model.to(device)
        self.model = model

        self.train_ds = TaggerDataset([s for s, _c in train_items], _labels([c for _s, c in train_items], index),
                                      len(names), self.size, mean, std, augment=opts.augment == "trivial")
        val_ds = TaggerDataset([s for s, _c in val_items], _labels([c for _s, c in val_items], index), len(names),
                               self.size, mean, std)
        if len(self.train_ds) == 0:
            raise TagLoomError(f"{opts.dataset}: no training images after the split")

        from timm.optim import create_optimizer_v2

        lr = opts.lr if opts.lr is not None else (2e-3 if opts.optimizer == "lamb" else 1e-4)
        extra = {"fused": True} if device.type == "cuda" and opts.optimizer == "adamw" else {}  # one kernel per step
        self.optimizer = create_optimizer_v2(model, opt=opts.optimizer, lr=lr, weight_decay=opts.weight_decay, **extra)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 parts (head, loss) on tensor cores
            torch.backends.cudnn.allow_tf32 = True
        per_rank = math.ceil(len(self.train_ds) / world)
        batches = math.ceil(per_rank / opts.batch_size)
        self.steps_per_epoch = math.ceil(batches / opts.grad_accum)
        self.total_steps = self.steps_per_epoch * opts.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(self.total_steps, int(opts.warmup * self.total_steps)))
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.loss_fn = make_loss(opts.loss)

        self.train_model = model
        if world > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        if opts.compile:
            self.train_model = torch.compile(self.train_model)
        self.loader_kw = dict(batch_size=opts.batch_size, num_workers=opts.workers, pin_memory=device.type == "cuda",
                              persistent_workers=False, worker_init_fn=_ignore_sigterm if opts.workers else None)
        self.val_loader = torch.utils.data.DataLoader(val_ds, shuffle=False,
                                                      sampler=val_shard(len(val_ds), world, rank) if world > 1 else None,
                                                      **self.loader_kw)
        model.train()

    # --- one step -----------------------------------------------------------------------------
    def _begin_epoch(self) -> None:
        import torch

        # every random draw of this epoch derives from (seed, epoch): shuffle, augmentation, drop-path.
        # The order is the same on every rank (each takes its shard of it); augmentation and drop-path
        # draws also depend on the rank, else all GPUs would draw the same masks and ops for their
        # i-th images (rank 0 draws exactly what a single process draws).
        opts, rank = self.opts, self.rank
        epoch_seed = opts.seed * 100003 + self.epoch
        torch.manual_seed(epoch_seed + rank * 1_000_003)
        g = torch.Generator().manual_seed(epoch_seed)
        order = torch.randperm(len(self.train_ds), generator=g).tolist()
        loader_g = g if rank == 0 else torch.Generator().manual_seed(epoch_seed + rank * 1_000_003)  # worker seeds
        loader = torch.utils.data.DataLoader(self.train_ds, sampler=shard(order, self.world, rank), generator=loader_g,
                                             **self.loader_kw)
        self.optimizer.zero_grad(set_to_none=True)
        self._running, self._seen, self._t_epoch = 0.0, 0, time.time()
        self._batches = len(loader)
        self._iter = enumerate(loader)

    def train_step(self) -> float:
        """One optimizer step over the next ``grad_accum`` batches of the epoch (fewer at its end)."""
        import torch

        opts, device, world, model = self.opts, self.device, self.world, self.model
        if self._iter is None:
            self._begin_epoch()
        step_loss, step_seen = 0.0, 0
        while True:
            b, (x, y) = next(self._iter)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            last_micro = (b + 1) % opts.grad_accum == 0 or b + 1 == self._batches
            sync = world == 1 or last_micro
            tm = self.train_model
            ctx = tm.no_sync() if (world > 1 and not sync and hasattr(tm, "no_sync")) else contextlib.nullcontext()
            with ctx:
                with self.autocast():
                    logits = tm(x)
                loss = self.loss_fn(logits.float(), y)
                self.scaler.scale(loss * opts.loss_multiplier / opts.grad_accum).backward()
            self._running += float(loss.detach()) * len(x)
            self._seen += len(x)
            step_loss += float(loss.detach()) * len(x)
            step_seen += len(x)
            if last_micro:
                break
        self.scaler.unscale_(self.optimizer)
        if opts.loss_multiplier != 1.0:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.div_(opts.loss_multiplier)
        if opts.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        if b + 1 == self._batches:  # the epoch's last batch: end the loader's iteration the way a for loop does
            next(self._iter, None)
            self._iter = None
        return step_loss / max(1, step_seen)

    def step_fields(self, loss: float) -> dict:
        # the epoch's running loss (smoother than one step's), epochs counted from 1
        return {"epoch": self.epoch + 1, "loss": self._running / max(1, self._seen),
                "lr": self.scheduler.get_last_lr()[0]}

    def stop_requested(self) -> bool:
        """Under torchrun every rank gets SIGTERM, each at its own step: they agree on stopping
        (any rank asked) so that none is left waiting in a collective for one that left."""
        if self.world == 1:
            return self._stop
        import torch

        flag = torch.tensor([1.0 if self._stop else 0.0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    # --- the epoch's end ----------------------------------------------------------------------
    def after_step(self, loss: float) -> None:
        if self._iter is None:
            self._end_epoch()

    def _end_epoch(self) -> None:
        import torch
        from safetensors.torch import save_file

        from tagloom.training.tagger.metrics import evaluate

        opts, world, epoch = self.opts, self.world, self.epoch
        epoch_time = time.time() - self._t_epoch
        running, seen = self._running, self._seen
        if world > 1:  # the epoch's loss over all ranks' images, not rank 0's share only
            totals = torch.tensor([running, float(seen)], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(totals)
            running, seen = totals[0].item(), int(totals[1].item())
        probs, targets = _predict(self.model, self.val_loader, self.device, self.precision)
        probs, targets = _gather(probs, world), _gather(targets, world)
        metrics = (evaluate(probs, targets, self.categories) if len(probs)
                   else {"macro_f1": 0.0, "map": 0.0, "threshold": 0.5})
        metrics.update(epoch=epoch + 1, train_loss=running / max(1, seen), images_per_s=seen / max(epoch_time, 1e-9))
        self.history.append(metrics)
        improved = metrics["macro_f1"] > self.best_f1
        if improved:
            self.best_f1, self.bad_epochs = metrics["macro_f1"], 0
        else:
            self.bad_epochs += 1
        self.epoch += 1
        if improved and is_main_process():
            save_file(self._weights(), str(self.state_dir / "best.safetensors"))
            (self.state_dir / "best.json").write_text(json.dumps(metrics, indent=1))
        self.save_state()
        report(event="epoch", epoch=epoch + 1, step=self.step, total=self.total_steps, loss=metrics["train_loss"],
               val_f1=metrics["macro_f1"], val_map=metrics["map"], threshold=metrics["threshold"])
        log(f"epoch {epoch + 1}/{opts.epochs}: loss {metrics['train_loss']:.4f}, val macro-F1@P=R "
            f"{metrics['macro_f1']:.4f} (t={metrics['threshold']:.2f}), mAP {metrics['map']:.4f}, "
            f"{metrics['images_per_s']:.1f} img/s")
        if self.on_epoch is not None:
            self.on_epoch(epoch, metrics)
        if opts.patience and self.bad_epochs >= opts.patience:
            log(f"early stopping: validation F1 did not improve for {self.bad_epochs} epochs")
            self.stopped_early = True

    def done(self) -> bool:
        return self.stopped_early or self.epoch >= self.opts.epochs

    # --- state --------------------------------------------------------------------------------
    def _weights(self) -> dict:
        return {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}

    def fingerprint(self) -> str:
        """What must not change between a run and its resume."""
        return json.dumps([self.opts.model_name, self.size, self.names])

    def check_fingerprint(self, state: dict, path: Path) -> None:
        if list(state["tags"]) != self.names:
            raise InputFileError(path, "checkpoint was trained on a different tag list (selected_tags.csv changed)")
        if "fingerprint" in state:  # checkpoints written before the fingerprint are checked by their tags only
            super().check_fingerprint(state, path)

    def save_state(self) -> None:
        """last.pt after a finished epoch; in the middle of one, the previous epoch's stays (resume
        reruns the epoch from its start, which is what keeps it exact)."""
        if self._iter is not None:
            log(f"stopped in epoch {self.epoch + 1}: --resume starts it again from {self.state_path}")
            return
        if self._saved_epoch == self.epoch:
            return
        self.write_state({
            "model": self._weights(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "epoch": self.epoch - 1,
            "step": self.step, "best_f1": self.best_f1, "bad_epochs": self.bad_epochs,
            "history": json.dumps(self.history), "tags": self.names, "rng": _rng_state(),
        })
        self._saved_epoch = self.epoch

    def load_state(self) -> bool:
        state = self.read_state()
        if state is None:
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when saved with fp16 off; loading {} into an enabled scaler raises
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = int(state["epoch"]) + 1, int(state["step"])
        self.best_f1, self.bad_epochs = float(state["best_f1"]), int(state["bad_epochs"])
        self.history = json.loads(state["history"])
        self._saved_epoch = self.epoch
        return True

    # --- the end ------------------------------------------------------------------------------
    def finish(self) -> Path:
        """The final folder holds the best epoch's weights, with thresholds calibrated on them."""
        import torch
        from safetensors.torch import load_file

        if self.world > 1:
            torch.distributed.barrier()
            if self.own_group:  # NCCL wants its communicators torn down before exit
                torch.distributed.destroy_process_group()
        self.final_metrics = {}
        if not is_main_process():
            return self.out
        best = self.state_dir / "best.safetensors"
        if best.is_file():
            self.model.load_state_dict(load_file(str(best)))
            self.final_metrics = json.loads((self.state_dir / "best.json").read_text())
        else:
            self.final_metrics = self.history[-1] if self.history else {}
        write_model_folder(self.model, self.config, self.tags, self.final_metrics, self.history, self.out, self.opts.onnx)
        return self.out

    def start_fields(self) -> dict:
        return {"epochs": self.opts.epochs, "images": len(self.train_ds), "tags": len(self.names),
                "device": str(self.device), "precision": self.precision}

    def done_fields(self) -> dict:
        return {"seconds": time.time() - self._t_start, "val_f1": self.final_metrics.get("macro_f1")}


def _ignore_sigterm(_worker_id: int) -> None:
    """DataLoader workers leave SIGTERM to the trainer: the launcher's Cancel signals the whole
    process group, and a worker killed by it would make the main process fail at once instead of
    finishing its step and stopping (the workers end with the main process or its iterator)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def train_tagger(opts: TaggerOptions, on_epoch: Callable[[int, dict], None] | None = None) -> Path:
    """Train and write the model folder; returns its path. ``on_epoch(epoch, metrics)`` is called
    after each epoch's checkpoint (tests use it to simulate a kill)."""
    return TaggerTrainer(opts, on_epoch=on_epoch).train()


def threshold_json(metrics: dict) -> dict:
    """threshold.json: the global P=R threshold plus one per category (the interrogation core reads
    ``general``/``character``/``artist``/``rating`` keys; ``threshold`` is the fallback)."""
    t = float(metrics.get("threshold", 0.5))
    out = {"threshold": t}
    for cat, m in (metrics.get("per_category") or {}).items():
        out[cat] = float(m["threshold"]) if m.get("tags_evaluated") else t
    for cat in ("general", "character", "artist", "rating"):
        out.setdefault(cat, t)
    out["calibration"] = metrics.get("metric", "macro F1 at P=R on validation")
    out["macro_f1"] = float(metrics.get("macro_f1", 0.0))
    return out


def write_model_folder(model, config: dict, tags, metrics: dict, history: list, out: Path, onnx: bool = True) -> None:
    import torch
    from safetensors.torch import save_file

    from tagloom.tagger.export import export_onnx
    from tagloom.training.data.prepare import write_selected_tags

    out.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").float().eval()
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    write_selected_tags(out / "selected_tags.csv", tags)
    (out / "threshold.json").write_text(json.dumps(threshold_json(metrics), indent=2))
    (out / "metrics.json").write_text(json.dumps({"best": metrics, "history": history}, indent=1))
    if onnx:
        import importlib.util

        if importlib.util.find_spec("onnx") is None:
            # ComfyUI installs often lack the `onnx` package the exporter needs: the folder still
            # works (torch backend), so a finished training run must not fail here.
            log("model.onnx not written: the `onnx` package is not installed (pip install onnx); "
                "the folder loads with the torch backend")
            return
        size = config["pretrained_cfg"]["input_size"][-1]
        export_onnx(model, out / "model.onnx", size, config["pretrained_cfg"]["mean"], config["pretrained_cfg"]["std"])
