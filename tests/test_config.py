"""Configuration: precedence, unknown keys and ranges, resume checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsseg.config import FinetuneConfig, PretrainConfig, dump_config, load_config
from rsseg.errors import ConfigError, InputError, OutputError
from rsseg.training.run_folder import config_differences, prepare_run


def test_precedence_defaults_file_flags_sets(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 0.5}\ntrainer: {epochs: 3, batch_size: 4}\n")
    cfg = load_config(PretrainConfig, path, ["trainer.epochs=7"],
                      flags={"trainer.batch_size": 9, "trainer.seed": None})
    assert cfg.optim.lr == 0.5  # file over default
    assert cfg.trainer.batch_size == 9  # flag over file
    assert cfg.trainer.epochs == 7  # --set over everything
    assert cfg.trainer.seed == 0  # a flag left out keeps the default


@pytest.mark.parametrize(("item", "message"), [
    ("optim.nope=1", "'optim.nope'"),
    ("trainer.epochs=0", "'trainer.epochs'"),
    ("data.crop_size=abc", "'data.crop_size'"),
    ("just_a_key", "not key=value"),
])
def test_bad_keys_are_named(item: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(FinetuneConfig, None, [item])


def test_missing_or_broken_config_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_config(PretrainConfig, tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(PretrainConfig, bad)


def test_resume_refuses_a_different_config(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = load_config(PretrainConfig, None, ["optim.lr=0.1"])
    assert prepare_run(run, cfg, resume=False, overwrite=False) is None
    with pytest.raises(OutputError, match="already exists"):
        prepare_run(run, cfg, resume=False, overwrite=False)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    other = load_config(PretrainConfig, None, ["optim.lr=0.2", "trainer.epochs=50"])
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.1 -> 0\.2") as err:
        prepare_run(run, other, resume=True, overwrite=False)
    assert "trainer.epochs" not in str(err.value)  # training longer is what resume is for
    longer = load_config(PretrainConfig, None, ["optim.lr=0.1", "trainer.epochs=50"])
    assert prepare_run(run, longer, resume=True, overwrite=False) == run / "checkpoints/last.ckpt"


def test_config_differences_and_dump_roundtrip(tmp_path: Path) -> None:
    cfg = load_config(FinetuneConfig, None, ["model.kwargs.decoder_channels=[32,16,8,8,8]"])
    dump_config(cfg, tmp_path / "c.yaml")
    again = load_config(FinetuneConfig, tmp_path / "c.yaml")
    assert again == cfg
    assert config_differences({"a": {"b": 1}}, {"a": {"b": 2, "c": 3}}) == [
        "a.b: 1 -> 2", "a.c: None -> 3"]
