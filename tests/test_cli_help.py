"""Every option of every `tagloom` command has help text, and a real default is shown (issue 11).
The trainers' options come from one declaration (tagloom/options.py) that also gives the node its flags."""

from __future__ import annotations

import argparse

from tagloom.cli import build_parser


def _walk(parser, path):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, path + [name])
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield " ".join(path), parser, action


def test_every_option_has_help_and_shows_its_default():
    missing, no_default = [], []
    for cmd, parser, action in _walk(build_parser(), ["tagloom"]):
        name = action.option_strings[0] if action.option_strings else action.dest
        if not action.help or action.help == argparse.SUPPRESS:
            missing.append(f"{cmd} {name}")
            continue
        d = action.default
        if action.option_strings and d not in (None, False, True, [], "", "{}", argparse.SUPPRESS):
            shown = parser.formatter_class(prog="x")._get_help_string(action) % {"default": d}
            if str(d) not in shown and "default" not in shown.lower():
                no_default.append(f"{cmd} {name} ({d!r})")
    assert not missing, "options without help: " + ", ".join(missing)
    assert not no_default, "defaults not shown: " + ", ".join(no_default)


def test_train_help_shows_defaults_and_unified_words():
    parser = build_parser()
    lora = parser.parse_args(["train", "lora", "ds", "--base", "b.safetensors", "--out", "o", "--mixed-precision", "no",
                              "--grad-checkpointing"])
    assert lora.precision == "no" and lora.gradient_checkpointing  # the old words still work
    tagger = parser.parse_args(["train", "tagger", "ds", "--out", "o", "--image-size", "64", "--model-args", '{"a": 1}'])
    assert tagger.resolution == 64
    from tagloom.training.tagger.options import from_args

    assert from_args(tagger).model_args == {"a": 1} and from_args(tagger).image_size == 64
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    text = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices["lora"].format_help()
    assert "(default: 16)" in text and "--precision" in text and "--gradient-checkpointing" in text


def test_node_flags_come_from_the_declaration():
    from tagloom.options import flag
    from tagloom.training.lora.options import LoraOptions
    from tagloom.training.tagger.options import TaggerOptions

    assert flag(LoraOptions, "batch_size") == "--batch-size" and flag(LoraOptions, "buckets") == "--no-buckets"
    assert flag(TaggerOptions, "resolution") == "--resolution" and flag(TaggerOptions, "onnx") == "--no-onnx"
