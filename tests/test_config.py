"""Settings come from one place with documented defaults."""

from tests_paths import REPO


def test_every_setting_is_documented():
    from tagloom.config import DEFAULTS

    doc = (REPO / "docs" / "configuration.md").read_text()
    for name in DEFAULTS:
        assert f"`{name}`" in doc, name


def test_environment_then_config_file_then_default(tagloom_home, monkeypatch):
    from tagloom import config

    assert config.setting("general_threshold") == 0.35
    (tagloom_home / "config.toml").write_text('general_threshold = 0.5\n[secrets]\nopenai_api_key = "sk-file"\n')
    assert config.setting("general_threshold") == 0.5
    monkeypatch.setenv("TAGLOOM_GENERAL_THRESHOLD", "0.25")
    assert config.setting("general_threshold") == 0.25
    assert config.secret("OPENAI_API_KEY") == "sk-file"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert config.secret("OPENAI_API_KEY") == "sk-env"


def test_broken_config_file_names_the_file(tagloom_home):
    import pytest

    from tagloom import config
    from tagloom.errors import InputFileError

    config.home()  # creates the folder
    (tagloom_home / "config.toml").write_text("general_threshold = [\n")
    with pytest.raises(InputFileError, match="config.toml"):
        config.setting("general_threshold")


def test_toml_reader_on_this_python():
    """Python 3.10 has no tomllib: tagloom reads TOML with tomli there (.ci/check-pythons runs the
    suite on 3.10, 3.12 and 3.13 to prove config.toml and tiers files load on each)."""
    import sys

    from tagloom.tomlcompat import tomllib

    assert tomllib.__name__ == ("tomllib" if sys.version_info >= (3, 11) else "tomli")
    assert tomllib.loads('a = "b"') == {"a": "b"}
