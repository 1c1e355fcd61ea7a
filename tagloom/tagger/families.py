"""Model families as data: what a tagger's weights expect and give, one record per family.

Like timm's ``PretrainedCfg``: code asks the record (``family.layout``, ``family.outputs``,
``family.to_input(pixels)``, ``family.read_labels(folder)``) instead of comparing family names.

    get_family("wd")        -> WD_V3    SmilingWolf's wd-v3 taggers
    get_family("joytag")    -> JOYTAG   fpgaminer's JoyTag (ONNX only)
    get_family("tagloom")   -> TAGLOOM  what `tagloom train tagger` writes (the wd-v3 convention)
    family_of_dir(folder)   -> the family name of a model folder

A record describes the input of the *model file* (model.onnx, or the torch backend's wrapper
around config.json + model.safetensors), starting from the uint8 RGB square every family's
geometry makes (tagloom.images.square_resized):

    channel order -> float32 -> / (255 / pixel_max) -> (x - mean) / std -> layout

wd-v3 and TagLoom models: BGR, 0..255, no normalisation, NHWC (the network's own mean/std from
config.json is applied inside the model: the ONNX graph, or the torch backend). JoyTag: RGB,
0..1, CLIP mean/std, NCHW, and its graph ends in logits. The arithmetic is exactly the references'
(tests/test_tagger_preprocess.py), for one image and for a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tagloom.errors import TagLoomError
from tagloom.tagger.thresholds import Thresholds

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NHWC, NCHW = "NHWC", "NCHW"


@dataclass(frozen=True)
class ModelFamily:
    name: str  # the registry key, also Tagger.family
    description: str
    layout: str = NHWC  # of the model input: NHWC | NCHW
    channel_order: str = "BGR"  # RGB | BGR
    pixel_max: float = 255.0  # the model value of a 255 level: 255.0 (0..255) | 1.0 (0..1)
    mean: tuple | None = None  # per channel (in channel_order), after scaling; None = none
    std: tuple | None = None
    input_size: int = 448  # when neither config.json nor the ONNX input says
    outputs: str = "probs"  # what the graph returns: probs (ends in a sigmoid) | logits
    label_file: str = "selected_tags.csv"  # selected_tags.csv (tag_id,name,category,count) | top_tags.txt (lines)
    files: dict = field(default_factory=dict)  # backend -> files a model folder needs for it
    thresholds: Thresholds | None = None  # the family's defaults when a folder has no threshold.json
    preprocessing: str = ""  # the reference steps, in words

    # --- what the record implies ------------------------------------------------------------------
    @property
    def backends(self) -> tuple[str, ...]:
        """The backends that can run this family ('torch' needs a timm model)."""
        return tuple(self.files)

    @property
    def raw_pixels(self) -> bool:
        """True when the model input is the pixels themselves (reordered, as float): then a batch
        decoded on the GPU can go straight into ONNX Runtime through IO binding."""
        return self.layout == NHWC and self.mean is None and self.pixel_max == 255.0

    def default_thresholds(self) -> Thresholds:
        return self.thresholds or Thresholds()

    # --- pixels -> model input ---------------------------------------------------------------------
    def to_input(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 RGB pixels, (S, S, 3) for one image or (B, S, S, 3) for a batch -> the model's
        float32 input in this family's layout (one image without the batch axis)."""
        x = pixels[..., ::-1] if self.channel_order == "BGR" else pixels
        x = np.asarray(x, dtype=np.float32)
        if self.pixel_max != 255.0:
            x = x / np.float32(255.0 / self.pixel_max)
        if self.mean is not None:
            x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == NCHW:
            x = np.moveaxis(x, -1, -3)
        return np.ascontiguousarray(x, dtype=np.float32)

    def tensor_to_input(self, pixels):
        """The same for a torch uint8 batch in the GPU decoder's layout (B, 3, S, S) RGB: a float32
        tensor on the same device in the model's layout."""
        x = pixels.flip(1) if self.channel_order == "BGR" else pixels
        x = x.float()
        if self.pixel_max != 255.0:
            x = x / (255.0 / self.pixel_max)
        if self.mean is not None:
            mean = x.new_tensor(self.mean).view(1, 3, 1, 1)
            std = x.new_tensor(self.std).view(1, 3, 1, 1)
            x = (x - mean) / std
        if self.layout == NHWC:
            x = x.permute(0, 2, 3, 1)
        return x.contiguous()

    def preprocess(self, image, size: int) -> np.ndarray:
        """One PIL image -> one model input (no batch axis): the family's reference preprocessing."""
        from tagloom.images import square_resized

        return self.to_input(np.asarray(square_resized(image, size), dtype=np.uint8))

    # --- the folder ---------------------------------------------------------------------------------
    def read_labels(self, model_dir):
        """The label list in this family's label file; a selected_tags.csv, when a folder has one,
        wins whatever the family (it names the categories)."""
        from tagloom.tagger.labels import read_selected_tags, read_top_tags

        model_dir = Path(model_dir)
        readers = {"selected_tags.csv": read_selected_tags, "top_tags.txt": read_top_tags}
        name = "selected_tags.csv" if (model_dir / "selected_tags.csv").is_file() else self.label_file
        return readers[name](model_dir / name)

    def input_side(self, shape) -> int | None:
        """The image side from a 4-D input shape in this layout (None when it is dynamic)."""
        side = shape[1] if self.layout == NHWC else shape[-1]
        return side if isinstance(side, int) else None


WD_FILES = {"onnx": ("model.onnx", "selected_tags.csv"),
            "torch": ("config.json", "model.safetensors", "selected_tags.csv")}
JOYTAG_FILES = {"onnx": ("model.onnx", "top_tags.txt")}

WD_V3 = ModelFamily(
    "wd", "SmilingWolf's wd-v3 taggers (EVA-02, ViT, SwinV2, ConvNeXt)",
    layout=NHWC, channel_order="BGR", outputs="probs", label_file="selected_tags.csv", files=WD_FILES,
    preprocessing="alpha on white, centred white square, bicubic to the model's size, float32 0..255, RGB->BGR, NHWC",
)
JOYTAG = ModelFamily(
    "joytag", "fpgaminer's JoyTag (its network is not a timm model: ONNX only)",
    layout=NCHW, channel_order="RGB", pixel_max=1.0, mean=CLIP_MEAN, std=CLIP_STD, outputs="logits",
    label_file="top_tags.txt", files=JOYTAG_FILES, thresholds=Thresholds(general=0.4, caption=0.4, tags=0.4),
    preprocessing="alpha on white, centred white square, bicubic, /255, CLIP mean/std, RGB, NCHW",
)
# Our trainer writes the wd-v3 layout on purpose (every wd-v3 tool reads it), plus metrics.json; its
# config.json carries the network's mean/std, which the model applies itself, as wd-v3's do.
TAGLOOM = ModelFamily(
    "tagloom", "a tagger trained by `tagloom train tagger` (the wd-v3 convention)",
    layout=NHWC, channel_order="BGR", outputs="probs", label_file="selected_tags.csv", files=WD_FILES,
    preprocessing=WD_V3.preprocessing,
)

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (WD_V3, JOYTAG, TAGLOOM)}


def get_family(family) -> ModelFamily:
    """A family record from its name (a record is returned as it is)."""
    if isinstance(family, ModelFamily):
        return family
    try:
        return FAMILIES[str(family)]
    except KeyError:
        raise TagLoomError(f"unknown model family {family!r} (known: {', '.join(FAMILIES)})") from None


def family_of_dir(model_dir) -> str:
    """The family of a model folder, from the files it holds: a label list of JoyTag's kind (and
    none of wd's) is JoyTag; a wd-layout folder with our trainer's metrics.json is ours; else wd-v3."""
    model_dir = Path(model_dir)
    if (model_dir / JOYTAG.label_file).is_file() and not (model_dir / WD_V3.label_file).is_file():
        return JOYTAG.name
    if (model_dir / "metrics.json").is_file() and (model_dir / "config.json").is_file():
        return TAGLOOM.name
    return WD_V3.name
