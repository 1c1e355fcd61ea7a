"""One image path: the tagger trainer's dataset (from a folder and from tar shards), the LoRA
trainer's decoder, single-image tagging and the batch captioner's CPU decode see the same pixels
for the same file: EXIF orientation, 16-bit, alpha, palette transparency, transparency keys, CMYK
and huge JPEGs are all handled in one place (tagloom.images). Real PIL files, nothing faked."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tagloom.images import composite_on_white, draft_hint, image_size, load_image, load_square

SIZE = 64


def _noise(w, h, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


def _awkward(folder):
    """name -> path of every kind of file whose decoding used to differ between training and inference."""
    out = {}
    # A phone photo: stored sideways, EXIF says "rotate 90 CW to display"; not square, not symmetric.
    rot = folder / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_noise(80, 40, seed=1)).save(rot, "JPEG", quality=95, exif=exif)
    out["exif_rotated"] = rot
    # 16-bit greyscale: a ramp over the whole range, with exact 8-bit expansions (k * 257) and the top.
    deep = folder / "deep16.png"
    ramp = np.linspace(0, 65535, 48 * 30).reshape(30, 48).astype(np.uint16)
    ramp[0, :4] = [0, 128 * 257, 255 * 257, 65535]
    Image.fromarray(ramp).save(deep)
    assert Image.open(deep).mode.startswith("I;16")
    out["png16"] = deep
    # RGBA with every level of alpha.
    rgba = _noise(50, 70, 4, seed=2)
    rgba[:, :, 3] = np.linspace(0, 255, 50, dtype=np.uint8)[None, :]
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    out["rgba"] = folder / "rgba.png"
    # Palette with a transparent index.
    pal = Image.fromarray(np.random.default_rng(3).integers(0, 4, (36, 52), dtype=np.uint8), "P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    pal.save(folder / "palette.png", transparency=0)
    assert "transparency" in Image.open(folder / "palette.png").info
    out["palette"] = folder / "palette.png"
    # RGB and greyscale PNGs with a tRNS colour key (that colour is transparent).
    keyed = _noise(40, 30, seed=4)
    keyed[5:15, 5:15] = (10, 20, 30)
    Image.fromarray(keyed).save(folder / "rgb_key.png", transparency=(10, 20, 30))
    out["rgb_key"] = folder / "rgb_key.png"
    grey = _noise(30, 40, seed=5)[:, :, 0]
    grey[:10] = 7
    Image.fromarray(grey, "L").save(folder / "l_key.png", transparency=7)
    out["l_key"] = folder / "l_key.png"
    # Greyscale + alpha, CMYK JPEG, an animated GIF.
    Image.fromarray(_noise(33, 21, 2, seed=6), "LA").save(folder / "la.png")
    out["la"] = folder / "la.png"
    Image.new("CMYK", (32, 16), (0, 255, 255, 0)).save(folder / "cmyk.jpg", "JPEG")
    out["cmyk"] = folder / "cmyk.jpg"
    frames = [Image.new("RGB", (24, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out["animated"] = folder / "anim.gif"
    return out


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    return _awkward(tmp_path_factory.mktemp("one_image_path"))


def _train_dataset(sources):
    from tagloom.training.tagger.data import TaggerDataset

    return TaggerDataset(list(sources), [[0]] * len(sources), 2, SIZE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _inference_pixels(path):
    """What single-image tagging feeds a wd model, back in uint8 RGB (its float input is exact)."""
    from tagloom.tagger.preprocess import wd_preprocess

    x = wd_preprocess(load_image(path, max_side_hint=draft_hint(SIZE)), SIZE)  # float32 BGR 0..255
    assert np.array_equal(x, np.rint(x))
    return x[:, :, ::-1].astype(np.uint8)


def test_training_and_inference_see_the_same_pixels(awkward):
    from tagloom.caption.decode import decode_file

    names = list(awkward)
    ds = _train_dataset([awkward[n] for n in names])
    for i, name in enumerate(names):
        path = awkward[name]
        train = np.asarray(ds.load(i))
        assert train.shape == (SIZE, SIZE, 3) and train.dtype == np.uint8, name
        assert np.array_equal(train, _inference_pixels(path)), name
        caption = decode_file(path, SIZE)
        assert caption.error is None, (name, caption.error)
        assert np.array_equal(train, caption.pixels), name
        assert np.array_equal(train, np.asarray(load_square(path, SIZE))), name
        # The trainer's tensor (before augmentation) is that image, BGR, normalised.
        x, _y = ds[i]
        expected = (train[:, :, ::-1].astype(np.float32) / 255.0 - 0.5) / 0.5
        assert np.allclose(x.numpy().transpose(1, 2, 0), expected, atol=1e-6), name


def test_tagger_preprocess_file_is_the_same_path(awkward):
    from tagger_helpers import tiny_model

    from tagloom.tagger import load_tagger

    tagger = load_tagger(tiny_model(), backend="onnx", device="cpu")
    size = tagger.input_size
    ds = _train_dataset([awkward["exif_rotated"], awkward["rgba"], awkward["png16"], awkward["palette"]])
    ds.image_size = size
    for i in range(len(ds)):
        x = tagger.preprocess_file(ds.paths[i])
        train = np.asarray(ds.load(i), dtype=np.float32)
        if tagger.layout == "NHWC":  # wd: BGR 0..255
            assert np.array_equal(x, train[:, :, ::-1]), ds.paths[i]
        else:
            assert np.array_equal(x, tagger.preprocess(ds.load(i))), ds.paths[i]


def test_shards_read_the_same_pixels(awkward, tmp_path):
    from tagloom.training.data.dataset import Item
    from tagloom.training.data.shards import read_shards, write_shards

    names = list(awkward)
    items = [Item(path=awkward[n], rel=awkward[n].name, caption="general", caption_path=None) for n in names]
    tars = write_shards(items, tmp_path, "train", per_shard=4)
    members = [m for m, _cap, _key in read_shards(tars)]
    assert len(members) == len(names)
    from_shards = _train_dataset(members)
    from_files = _train_dataset([awkward[n] for n in names])
    for i, name in enumerate(names):
        assert np.array_equal(np.asarray(from_shards.load(i)), np.asarray(from_files.load(i))), name


def test_lora_decoding_is_the_same_path(awkward):
    from tagloom.training.data.images import load_rgb

    for name, path in awkward.items():
        rgb = load_rgb(path)
        assert rgb.mode == "RGB", name
        assert np.array_equal(np.asarray(rgb), np.asarray(composite_on_white(load_image(path)))), name
        assert image_size(path) == rgb.size, name  # the LoRA bucket is picked on the upright size


def test_what_each_awkward_file_becomes(awkward):
    from tagloom.training.data.images import load_rgb

    # Upright: the 80x40 sideways photo is 40 wide and 80 high, for training as for inference.
    assert load_rgb(awkward["exif_rotated"]).size == (40, 80)
    assert load_image(awkward["exif_rotated"]).size == (40, 80)
    # 16 bits -> 8 bits by v / 257: exact 8-bit expansions come back unchanged, 65535 is white.
    row = np.asarray(load_rgb(awkward["png16"]))[0, :4, 0]
    assert row.tolist() == [0, 128, 255, 255]
    # Transparency composited on white: the fully transparent column is white in the training image.
    assert np.asarray(load_rgb(awkward["rgba"]))[:, 0].min() == 255
    assert (np.asarray(load_rgb(awkward["rgb_key"]))[5:15, 5:15] == 255).all()
    assert (np.asarray(load_rgb(awkward["l_key"]))[:10] == 255).all()
    pal = np.asarray(Image.open(awkward["palette"]))
    assert (np.asarray(load_rgb(awkward["palette"]))[pal == 0] == 255).all()


def test_huge_jpeg_is_reduced_the_same_way(tmp_path, monkeypatch):
    monkeypatch.setenv("TAGLOOM_MAX_IMAGE_PIXELS", "100000")
    path = tmp_path / "big.jpg"
    Image.fromarray(_noise(1600, 1200, seed=7)).save(path, "JPEG")
    ds = _train_dataset([path])
    assert np.array_equal(np.asarray(ds.load(0)), _inference_pixels(path))


def test_pil_pixel_limit_is_never_changed_for_good(awkward, tmp_path):
    from tagloom.training.data.images import load_rgb

    before = Image.MAX_IMAGE_PIXELS
    for path in awkward.values():
        load_rgb(path)
        _train_dataset([path]).load(0)
    assert Image.MAX_IMAGE_PIXELS == before


def test_bad_files_name_the_file_in_training_too(tmp_path):
    import io

    from tagloom.errors import InputFileError
    from tagloom.training.data.images import load_rgb

    buf = io.BytesIO()
    Image.fromarray(_noise(200, 150)).save(buf, "JPEG", quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InputFileError) as e:
        load_rgb(cut)
    assert str(cut) in str(e.value) and "truncated" in str(e.value)
    with pytest.raises(InputFileError, match="truncated"):
        _train_dataset([cut]).load(0)
    with pytest.raises(InputFileError, match="shard.tar:x.jpg.*truncated"):
        load_rgb(io.BytesIO(buf.getvalue()[:2000]), name="shard.tar:x.jpg")
