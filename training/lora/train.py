"""The LoRA training loop (diffusers + peft), single process, GPU or CPU.

Resume is exact: a step's batch follows from (seed, epoch) and its noise, timesteps and caption
shuffle/dropout from (seed, step), so continuing from a saved state at step k draws what an
uninterrupted run draws from step k on. State (adapter weights, optimizer, schedule) lives in a
hidden folder beside the output file, with extensions ComfyUI does not list as models.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

from tagloom import config
from tagloom.training.lora.options import LoraOptions
from tagloom.training.progress import log, report
from tagloom.training.trainer import Trainer

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
UNET_CONV_TARGETS = ["conv1", "conv2"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
BASE_VERSION = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}
MODELSPEC_ARCH = {"sd15": "stable-diffusion-v1/lora", "sdxl": "stable-diffusion-xl-v1-base/lora"}


def lora_dir() -> Path:
    folders = config.comfy_folder("loras")
    path = folders[0] if folders else config.home() / "loras"
    path.mkdir(parents=True, exist_ok=True)
    return path


def output_path(out: str) -> Path:
    p = Path(out).expanduser()
    if p.suffix != ".safetensors":
        p = p.with_name(p.name + ".safetensors")
    if not p.is_absolute() and len(p.parts) == 1:
        p = lora_dir() / p
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def state_dir(out: Path) -> Path:
    return out.parent / f".{out.stem}.tagloom-state"


class LoraTrainer(Trainer):
    """The hooks of training/trainer.py's Trainer over a diffusers base with peft adapters; the
    state (state.tagloom) lives in a hidden folder beside the output file."""

    kind = "lora"
    state_file = "state.tagloom"
    fingerprint_fields = "rank, batch, resolution, images"

    def __init__(self, opts: LoraOptions, base=None):
        import torch

        super().__init__(opts)
        self.out = output_path(opts.out)
        self.state_dir = state_dir(self.out)
        if opts.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(opts.device)
        self._resolve_precision(off="no")  # kohya's ss_mixed_precision word for full precision
        weight_dtype = self.amp_dtype if (self.amp_dtype is not None and self.device.type == "cuda") else torch.float32
        if base is None:
            from tagloom.training.lora.base import load_base

            base = load_base(opts.base, dtype=weight_dtype)
        self.base = base
        self.weight_dtype = weight_dtype
        self._setup()

    @property
    def mixed_precision(self) -> str:  # the attribute's former name
        return self.precision

    # --- setup --------------------------------------------------------------------------------
    def _setup(self):
        import torch
        from peft import LoraConfig, inject_adapter_in_model

        from tagloom.training.lora.data import epoch_batches, load_samples

        opts, base = self.opts, self.base
        self.samples = load_samples(Path(opts.dataset), opts.resolution, opts.bucket_step, opts.buckets)
        self.alpha = float(opts.alpha if opts.alpha is not None else opts.rank)
        for m in [base.unet, *base.text_encoders]:
            m.requires_grad_(False)
            # a base passed in (bench, tests) is in whatever dtype its maker chose: the UNet and the
            # text encoders must be in weight_dtype, which batch_loss casts the UNet's inputs to
            m.to(self.device, dtype=self.weight_dtype)
        base.vae.requires_grad_(False)
        # latents are encoded once, in full precision (load_base reads the VAE in float32 too)
        base.vae.to(self.device, dtype=torch.float32)
        torch.manual_seed(opts.seed)  # LoRA init
        targets = UNET_TARGETS + (UNET_CONV_TARGETS if opts.conv else [])
        inject_adapter_in_model(LoraConfig(r=opts.rank, lora_alpha=self.alpha, target_modules=targets), base.unet)
        self.train_te = opts.text_encoder_lr > 0
        if self.train_te:
            for te in base.text_encoders:
                inject_adapter_in_model(LoraConfig(r=opts.rank, lora_alpha=self.alpha, target_modules=TE_TARGETS), te)
        groups = [{"params": self._lora_params(base.unet), "lr": opts.lr}]
        if self.train_te:
            groups.append({"params": [p for te in base.text_encoders for p in self._lora_params(te)],
                           "lr": opts.text_encoder_lr})
        if opts.gradient_checkpointing:
            base.unet.enable_gradient_checkpointing()
            if self.train_te:
                for te in base.text_encoders:
                    te.gradient_checkpointing_enable()
                    # transformers checkpoints a layer only in training mode, and from_pretrained
                    # returns eval mode: without this the option saved no text encoder memory.
                    # (CLIP's dropout and attention_dropout are 0 in SD configs: nothing else changes.)
                    te.train()
        if opts.optimizer == "lamb":
            from timm.optim import Lamb

            self.optimizer = Lamb(groups, weight_decay=opts.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(groups, weight_decay=opts.weight_decay)
        self.batches_per_epoch = len(epoch_batches(self.samples, opts.batch_size, opts.seed, 0))
        self.steps_per_epoch = max(1, math.ceil(self.batches_per_epoch / opts.grad_accum))
        self.total_steps = opts.steps or self.steps_per_epoch * opts.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.mixed_precision == "fp16")
        self._epoch_cache: tuple[int, list] | None = None
        self.latents = self._cache_latents() if opts.cache_latents != "none" else None

    def _lr_lambda(self, step: int) -> float:
        w = self.opts.warmup_steps
        if w and step < w:
            return (step + 1) / w
        if self.opts.lr_scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - w) / max(1, self.total_steps - w))))
        return 1.0

    @staticmethod
    def _lora_params(model):
        params = [p for n, p in model.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
            p.data = p.data.float()  # adapters train in fp32 even when the base is fp16/bf16
        return params

    # --- latents ------------------------------------------------------------------------------
    def _encode(self, index: int):
        import torch

        from tagloom.training.lora.data import pixel_tensor

        x = pixel_tensor(self.samples[index]).unsqueeze(0).to(self.device, torch.float32)
        with torch.no_grad():
            latent = self.base.vae.encode(x).latent_dist.mode()
        vc = self.base.vae.config
        shift = getattr(vc, "shift_factor", None) or 0.0
        return ((latent - shift) * vc.scaling_factor)[0].float().cpu()

    def _cache_latents(self) -> list:
        from safetensors.torch import load_file, save_file

        key = json.dumps([[s.item.rel, s.bucket, os.path.getmtime(s.item.path)] for s in self.samples])
        path = self.state_dir / "latents.tagloom"
        if self.opts.cache_latents == "disk" and path.is_file():
            try:
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as f:
                    meta = f.metadata() or {}
                if meta.get("key") == key:
                    data = load_file(str(path))
                    crops = json.loads(meta["crops"])
                    for s, c in zip(self.samples, crops):
                        s.crop = tuple(c)
                    log(f"latents: {len(self.samples)} loaded from {path}")
                    return [data[str(i)] for i in range(len(self.samples))]
            except Exception as e:  # a damaged cache is rebuilt, never trusted
                log(f"latents: cache {path} unusable ({e}); re-encoding")
        log(f"latents: encoding {len(self.samples)} images")
        latents = [self._encode(i) for i in range(len(self.samples))]
        if self.opts.cache_latents == "disk":
            self.state_dir.mkdir(parents=True, exist_ok=True)
            save_file({str(i): t.contiguous() for i, t in enumerate(latents)}, str(path),
                      metadata={"key": key, "crops": json.dumps([list(s.crop) for s in self.samples])})
        return latents

    def _latent(self, index: int):
        return self.latents[index] if self.latents is not None else self._encode(index)

    # --- text ---------------------------------------------------------------------------------
    def encode_text(self, captions: list[str]):
        import torch

        ids = [tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids.to(self.device) for tok in self.base.tokenizers]
        ctx = torch.enable_grad() if self.train_te else torch.no_grad()
        with ctx:
            if self.base.arch == "sd15":
                return self.base.text_encoders[0](ids[0])[0], None
            h1 = self.base.text_encoders[0](ids[0], output_hidden_states=True).hidden_states[-2]
            out2 = self.base.text_encoders[1](ids[1], output_hidden_states=True)
            return torch.cat([h1, out2.hidden_states[-2]], dim=-1), out2.text_embeds

    # --- one step -----------------------------------------------------------------------------
    def batch_loss(self, indices: list[int], gen, captions: list[str], timesteps=None):
        import torch
        import torch.nn.functional as F

        opts, base = self.opts, self.base
        latents = torch.stack([self._latent(i) for i in indices]).to(self.device)
        noise = torch.randn(latents.shape, generator=gen).to(self.device)
        if opts.noise_offset:
            noise = noise + opts.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=gen).to(self.device)
        sched = base.noise_scheduler
        if timesteps is None:
            timesteps = torch.randint(0, sched.config.num_train_timesteps, (len(indices),), generator=gen)
        timesteps = timesteps.to(self.device)
        noisy = sched.add_noise(latents, noise, timesteps)
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else _Null()
        with autocast:
            ehs, pooled = self.encode_text(captions)
            kwargs = {}
            if base.arch == "sdxl":
                # float32, not ehs.dtype: bf16 holds integers exactly only up to 256 (1365 -> 1368);
                # the UNet embeds time_ids in float32 itself
                time_ids = torch.tensor([[*self.samples[i].original_size, *self.samples[i].crop,
                                          self.samples[i].bucket[1], self.samples[i].bucket[0]] for i in indices],
                                        dtype=torch.float32, device=self.device)
                kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
            pred = base.unet(noisy.to(self.weight_dtype), timesteps, ehs.to(self.weight_dtype), **kwargs).sample
        if sched.config.prediction_type == "v_prediction":
            target = sched.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
        if opts.min_snr_gamma:
            ac = sched.alphas_cumprod.to(self.device)[timesteps]
            snr = ac / (1 - ac)
            weight = torch.clamp(snr, max=opts.min_snr_gamma) / (snr + 1 if sched.config.prediction_type == "v_prediction" else snr)
            loss = loss * weight
        return loss.mean()

    def _batches(self, epoch: int) -> list:
        from tagloom.training.lora.data import epoch_batches

        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            self._epoch_cache = (epoch, epoch_batches(self.samples, self.opts.batch_size, self.opts.seed, epoch))
        return self._epoch_cache[1]

    def train_step(self) -> float:
        import torch

        from tagloom.training.lora.data import process_caption

        opts = self.opts
        epoch, within = divmod(self.step, self.steps_per_epoch)
        batches = self._batches(epoch)
        micro = batches[within * opts.grad_accum : (within + 1) * opts.grad_accum]
        total = 0.0
        for m, indices in enumerate(micro):
            gen = torch.Generator().manual_seed(opts.seed * 1_000_003 + self.step * 64 + m)
            rng = random.Random(f"{opts.seed}:{self.step}:{m}")
            captions = [process_caption(self.samples[i].item.caption or "", rng, opts.shuffle_caption,
                                        opts.keep_tokens, opts.caption_dropout) for i in indices]
            loss = self.batch_loss(indices, gen, captions)
            self.scaler.scale(loss / len(micro)).backward()
            total += float(loss.detach()) / len(micro)
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if opts.clip_grad:
            torch.nn.utils.clip_grad_norm_(params, opts.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return total

    def fixed_loss(self, n: int = 4) -> float:
        """A deterministic loss (fixed images, noise and spread timesteps) to compare weights by."""
        import torch

        idx = list(range(min(n, len(self.samples))))
        gen = torch.Generator().manual_seed(12345)
        T = self.base.noise_scheduler.config.num_train_timesteps
        ts = torch.linspace(T * 0.1, T * 0.9, len(idx)).long()
        with torch.no_grad():
            total = 0.0
            for k, i in enumerate(idx):  # one at a time: samples may sit in different buckets
                total += float(self.batch_loss([i], gen, [self.samples[i].item.caption or ""], ts[k : k + 1]))
        return total / len(idx)

    # --- files --------------------------------------------------------------------------------
    def te_prefixes(self) -> list[str]:
        return ["lora_te"] if self.base.arch == "sd15" else ["lora_te1", "lora_te2"]

    def kohya_state(self) -> dict:
        import torch
        from peft import get_peft_model_state_dict

        from tagloom.training.lora.kohya import peft_to_kohya

        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[self.opts.save_precision]
        out = peft_to_kohya(get_peft_model_state_dict(self.base.unet), "lora_unet", self.alpha, dtype)
        if self.train_te:
            for prefix, te in zip(self.te_prefixes(), self.base.text_encoders):
                out.update(peft_to_kohya(get_peft_model_state_dict(te), prefix, self.alpha, dtype))
        return out

    def save_lora(self, path: Path | None = None) -> Path:
        from safetensors.torch import save_file

        from tagloom.training.lora.data import tag_frequency
        from tagloom.training.lora.kohya import metadata, model_hash

        path = path or self.out
        tensors = self.kohya_state()
        o = self.opts
        buckets = sorted({s.bucket for s in self.samples})
        meta = metadata(
            ss_network_module="networks.lora", ss_network_dim=o.rank, ss_network_alpha=self.alpha,
            ss_network_args={"conv_dim": o.rank, "conv_alpha": self.alpha} if o.conv else None,
            ss_base_model_version=BASE_VERSION[self.base.arch], ss_sd_model_name=self.base.name,
            ss_resolution=f"({o.resolution}, {o.resolution})", ss_learning_rate=o.lr, ss_unet_lr=o.lr,
            ss_text_encoder_lr=o.text_encoder_lr, ss_optimizer=o.optimizer, ss_lr_scheduler=o.lr_scheduler,
            ss_lr_warmup_steps=o.warmup_steps,
            ss_epoch=self.step // self.steps_per_epoch, ss_steps=self.step, ss_max_train_steps=self.total_steps,
            ss_batch_size_per_device=o.batch_size, ss_gradient_accumulation_steps=o.grad_accum,
            ss_num_train_images=sum(s.item.repeats for s in self.samples), ss_mixed_precision=self.mixed_precision,
            ss_save_precision=o.save_precision,
            ss_seed=o.seed, ss_tag_frequency=tag_frequency(self.samples), ss_min_snr_gamma=o.min_snr_gamma or None,
            ss_noise_offset=o.noise_offset or None, ss_caption_dropout_rate=o.caption_dropout,
            ss_shuffle_caption=o.shuffle_caption, ss_keep_tokens=o.keep_tokens,
            ss_gradient_checkpointing=o.gradient_checkpointing, ss_cache_latents=o.cache_latents != "none",
            ss_enable_bucket=o.buckets, ss_bucket_info={"buckets": [list(b) for b in buckets]},
            ss_v2=False, ss_training_started_at=self.started_at, ss_training_finished_at=time.time(),
            ss_output_name=path.stem, ss_training_comment="trained with TagLoom",
            sshs_model_hash=model_hash(tensors),
            **{"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": MODELSPEC_ARCH[self.base.arch],
               "modelspec.implementation": "diffusers", "modelspec.title": path.stem,
               "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
               "modelspec.resolution": f"{o.resolution}x{o.resolution}"},
        )
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)  # a kill while writing never leaves a half-written LoRA
        return path

    def save_state(self) -> None:
        from peft import get_peft_model_state_dict

        self.write_state({
            "step": self.step, "total_steps": self.total_steps, "started_at": self.started_at,
            "unet": {k: v.float() for k, v in get_peft_model_state_dict(self.base.unet).items()},
            "te": [{k: v.float() for k, v in get_peft_model_state_dict(te).items()} for te in self.base.text_encoders]
            if self.train_te else [],
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        })

    def fingerprint(self) -> str:
        """What must not change between a run and its resume."""
        o = self.opts
        return json.dumps([o.rank, self.alpha, o.conv, self.train_te, o.batch_size, o.grad_accum, o.resolution,
                           o.buckets, o.seed, [s.item.rel for s in self.samples], self.base.arch])

    def load_state(self) -> bool:
        from peft import set_peft_model_state_dict

        state = self.read_state()
        if state is None:
            return False
        set_peft_model_state_dict(self.base.unet, state["unet"])
        for te, sd in zip(self.base.text_encoders, state["te"]):
            set_peft_model_state_dict(te, sd)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when saved with fp16 off; loading {} into an enabled scaler raises
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.started_at = int(state["step"]), float(state["started_at"])
        return True

    def render_sample(self) -> Path | None:
        import torch
        from diffusers import EulerDiscreteScheduler

        o, b = self.opts, self.base
        sched = EulerDiscreteScheduler.from_config(b.sample_scheduler_config or dict(b.noise_scheduler.config))
        if b.arch == "sd15":
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline(vae=b.vae, text_encoder=b.text_encoders[0], tokenizer=b.tokenizers[0],
                                           unet=b.unet, scheduler=sched, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
        else:
            from diffusers import StableDiffusionXLPipeline

            pipe = StableDiffusionXLPipeline(vae=b.vae, text_encoder=b.text_encoders[0], text_encoder_2=b.text_encoders[1],
                                             tokenizer=b.tokenizers[0], tokenizer_2=b.tokenizers[1], unet=b.unet,
                                             scheduler=sched)
        pipe.set_progress_bar_config(disable=True)
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else _Null()
        with torch.no_grad(), autocast:
            latents = pipe(o.sample_prompt, num_inference_steps=o.sample_steps, height=o.resolution, width=o.resolution,
                           generator=torch.Generator(self.device).manual_seed(o.seed), output_type="latent").images
        # the VAE decodes outside autocast, in its own float32: under fp16 autocast SDXL's VAE
        # overflows (NaN, a black sample), which is why diffusers keeps it in float32 (force_upcast)
        with torch.no_grad():
            vc = b.vae.config
            latents = latents.to(self.device, torch.float32) / vc.scaling_factor + (getattr(vc, "shift_factor", None) or 0.0)
            decoded = b.vae.decode(latents).sample
        image = pipe.image_processor.postprocess(decoded, output_type="pil")[0]
        folder = self.out.parent / f"{self.out.stem}_samples"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{self.step:06d}.png"
        image.save(path)
        return path

    # --- the loop (Trainer.train) -------------------------------------------------------------
    def after_step(self, loss: float) -> None:
        opts = self.opts
        at_epoch_end = self.step % self.steps_per_epoch == 0
        if (opts.save_every and self.step % opts.save_every == 0) or (not opts.save_every and at_epoch_end):
            self.save_state()
            self.save_lora()
        if opts.sample_every and opts.sample_prompt and self.step % opts.sample_every == 0:
            path = self.render_sample()
            report(event="sample", step=self.step, total=self.total_steps, path=str(path))

    def finish(self) -> Path:
        return self.save_lora()

    def start_fields(self) -> dict:
        return {"images": len(self.samples), "device": str(self.device), "precision": self.precision}


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def train_lora(opts: LoraOptions) -> Path:
    return LoraTrainer(opts).train()
