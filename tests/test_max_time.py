"""Wall-clock budgets (``--max-time``): parsing, the LR schedule on a fake clock, a real
pretraining stopped by its budget and resumed, fine-tuning within a budget, a too-short budget."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from test_training import TINY_FINETUNE, TINY_PRETRAIN, as_sets, scene, sparse_labels  # noqa: F401

from rsseg.config import FinetuneConfig, OptimConfig, PretrainConfig, load_config, parse_duration
from rsseg.errors import ConfigError, InputError
from rsseg.models.backbone import read_backbone
from rsseg.models.bundle import load_bundle
from rsseg.pipelines.tile import TileOptions, tile_scenes
from rsseg.training.engine import ScheduleClock, TimeBudget, optimizer_and_schedule
from rsseg.training.run_folder import config_differences

FORMS = "90s, 45m, 2h, 1h30m, 1:30:00"


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("45m", 2700), ("2h", 7200), ("1:30:00", 5400), ("1h30m", 5400), ("1:30", 90),
    ("0:45", 45), ("90", 90), ("2.5", 2.5), ("0.5h", 1800), (" 45 m ", 2700), (12, 12),
    (0.25, 0.25)])
def test_durations_parse(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    # --set goes through YAML first (which reads 1:30:00 as the base-60 integer 5400)
    cfg = load_config(PretrainConfig, None, [f"trainer.max_time={text}"])
    assert cfg.trainer.max_time == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "why"), [
    ("0", "must be a positive duration"), ("0s", "must be a positive duration"),
    ("-5m", "is not a duration"), ("-3", "must be a positive duration"),
    ("abc", "is not a duration"), ("45x", "is not a duration"), ("1:75", "is not a duration"),
    ("1:2:3:4", "is not a duration"), ("m", "is not a duration"), ("", "is not a duration")])
def test_bad_durations_name_the_forms(text: str, why: str) -> None:
    with pytest.raises(InputError, match=why) as err:
        parse_duration(text)
    assert str(err.value).startswith("--max-time") and FORMS in str(err.value)
    if text and text != "1:2:3:4":  # --set: YAML reads "" as null, 1:2:3:4 as base-60 seconds
        with pytest.raises(ConfigError, match="'trainer.max_time'.*" + why):
            load_config(FinetuneConfig, None, [f"trainer.max_time={text}"])


def _cosine(optim: OptimConfig, progress: float, lr: float | None = None) -> float:
    lr = optim.lr if lr is None else lr
    return optim.min_lr + (lr - optim.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


class FakeClock:
    """Elapsed seconds that the test sets: ``clock.now = 30``."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _stepper(optim: OptimConfig, clock: ScheduleClock, groups: list | None = None):
    """``step(now)``: one optimizer + scheduler step at fake time ``now``; returns the LRs."""
    params = groups or [torch.nn.Parameter(torch.zeros(1))]
    setup = optimizer_and_schedule(params, optim, 20, clock)
    assert setup["lr_scheduler"]["interval"] == "step"
    opt, sched = setup["optimizer"], setup["lr_scheduler"]["scheduler"]

    def step(now: float) -> list[float]:
        clock.elapsed.now = now
        opt.step()
        sched.step()
        return [g["lr"] for g in opt.param_groups]

    return step


def test_cosine_reaches_its_floor_at_the_budget_whatever_the_speed() -> None:
    """A fast and a slow machine (10× fewer steps) see the same LR at the same elapsed time,
    and both are at the floor when the budget is spent; the clock is fake, nothing sleeps."""
    optim = OptimConfig(lr=1e-3, min_lr=1e-6, schedule="cosine")
    clock = ScheduleClock(max_time=60.0, elapsed=FakeClock(), total_steps=10**6)
    fast, slow = _stepper(optim, clock), _stepper(optim, clock)
    for i in range(1, 601):
        t = i * 0.1
        lr_fast = fast(t)[0]
        if i % 10 == 0:
            assert slow(t)[0] == pytest.approx(lr_fast, rel=1e-9)
            assert lr_fast == pytest.approx(_cosine(optim, t / 60), rel=1e-9)
    assert lr_fast == pytest.approx(optim.min_lr, rel=1e-9)
    assert fast(75.0)[0] == pytest.approx(optim.min_lr, rel=1e-9)  # past the budget: stays


def test_epochs_bound_the_schedule_when_they_end_first() -> None:
    """``max(step progress, time progress)``: the steps that ``epochs`` allow end it too."""
    optim = OptimConfig(lr=1e-3, min_lr=0.0, schedule="cosine")
    step = _stepper(optim, ScheduleClock(max_time=3600.0, elapsed=FakeClock(),
                                         total_steps=4))
    assert step(1.0)[0] == pytest.approx(_cosine(optim, 0.25))
    assert step(2.0)[0] == pytest.approx(_cosine(optim, 0.5))
    assert step(3.0)[0] == pytest.approx(_cosine(optim, 0.75))
    assert step(4.0)[0] == pytest.approx(0.0, abs=1e-12)


def test_exponential_and_groups_follow_the_budget() -> None:
    """Exponential decay completes its ``gamma**epochs`` at the budget; each param group (the
    encoder at a fraction of the rate) keeps its own rate and the common floor."""
    expo = OptimConfig(lr=1e-3, schedule="exponential", gamma=0.9)
    clock = ScheduleClock(max_time=10.0, elapsed=FakeClock(), total_steps=10**6)
    step = _stepper(expo, clock)
    assert step(5.0)[0] == pytest.approx(1e-3 * 0.9 ** 10)
    assert step(10.0)[0] == pytest.approx(1e-3 * 0.9 ** 20)
    cos = OptimConfig(lr=1e-3, min_lr=1e-5, schedule="cosine")
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    step = _stepper(cos, clock, [{"params": [a], "lr": 1e-4}, {"params": [b]}])
    assert step(5.0) == pytest.approx([_cosine(cos, 0.5, 1e-4), _cosine(cos, 0.5)])
    assert step(10.0) == pytest.approx([1e-5, 1e-5])


def test_without_a_budget_the_schedule_is_per_epoch() -> None:
    setup = optimizer_and_schedule([torch.nn.Parameter(torch.zeros(1))], OptimConfig(), 20)
    assert setup["lr_scheduler"]["interval"] == "epoch"
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR
    assert isinstance(setup["lr_scheduler"]["scheduler"], cosine)


class RecordLR(Callback):
    """Records ``(global step, LR, the budget's elapsed seconds)`` after every training step."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, float, float]] = []

    def on_train_batch_end(self, trainer, module, *args) -> None:
        budget = next(c for c in trainer.callbacks if isinstance(c, TimeBudget))
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.rows.append((trainer.global_step, lr, budget.elapsed()))


@pytest.fixture(scope="module")
def many_tiles(scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """117 tiles of :func:`scene`: 29 steps of 4 per epoch, longer than the budgets here."""
    out = tmp_path_factory.mktemp("many") / "tiles"
    tile_scenes([scene], out, TileOptions(size=64, stride=4))
    return out


def _checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def test_pretraining_stops_at_its_budget_and_resumes_on_the_same_clock(
        many_tiles: Path, tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch,
        one_thread: None) -> None:
    import rsseg.pipelines.pretrain as pipeline

    run = tmp_path / "run"
    sets = as_sets(TINY_PRETRAIN)
    first = run_cli("pretrain", many_tiles, "--out", run, "--max-time", "3s", "--epochs", "1000",
                    *sets)
    assert first.exit_code == 0, first.stderr
    assert "left" in first.stdout and "(budget 3.0s)" in first.stdout
    ckpt = _checkpoint(run)
    steps = ckpt["global_step"]
    assert 0 < steps < 1000 * 29 and steps % 29 != 0  # stopped by time, mid-epoch
    elapsed = ckpt["callbacks"]["TimeBudget"]["time_elapsed"]["train"]
    assert elapsed >= 3.0
    lr = ckpt["optimizer_states"][0]["param_groups"][0]["lr"]
    optim = OptimConfig()
    assert lr == pytest.approx(optim.min_lr, abs=1e-9)  # the cosine ended with the budget
    _, meta = read_backbone(run)
    assert meta.epochs == ckpt["epoch"] + 1  # exported at the end of the interrupted epoch

    spent = run_cli("pretrain", many_tiles, "--out", run, "--resume", "--max-time", "3s",
                    "--epochs", "1000", *sets)
    assert spent.exit_code == 0, spent.stderr
    assert "Warning: the resumed run already spent its time budget" in spent.stderr
    assert _checkpoint(run)["global_step"] == steps  # nothing trained

    build_trainer = pipeline.build_trainer
    record = RecordLR()

    def recording(*args, callbacks, **kwargs):
        return build_trainer(*args, callbacks=[*callbacks, record], **kwargs)

    monkeypatch.setattr(pipeline, "build_trainer", recording)
    budget = round(elapsed + 2.0, 2)  # a longer budget: the clock goes on from where it stopped
    resumed = run_cli("pretrain", many_tiles, "--out", run, "--resume", "--max-time",
                      f"{budget}", "--epochs", "1000", *sets)
    assert resumed.exit_code == 0, resumed.stderr
    assert record.rows and record.rows[0][0] == steps + 1  # continued, did not restart

    def expected(step: int, seconds: float) -> float:
        return _cosine(optim, min(max(step / (1000 * 29), seconds / budget), 1.0))

    before = elapsed  # each step's LR was set between the previous record and its own
    for step, lr, seconds in record.rows:
        assert expected(step, seconds) - 1e-12 <= lr <= expected(step, before) + 1e-12
        before = seconds
    after = _checkpoint(run)
    assert after["callbacks"]["TimeBudget"]["time_elapsed"]["train"] >= budget
    assert after["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(
        optim.min_lr, abs=1e-9)
    assert read_backbone(run)[1].epochs == after["epoch"] + 1


def test_finetuning_within_a_budget_writes_its_bundle(scene: Path,  # noqa: F811
                                                      sparse_labels: Path,  # noqa: F811
                                                      tmp_path: Path, run_cli,
                                                      one_thread: None) -> None:
    run = tmp_path / "ft"
    result = run_cli("finetune", "--scene", scene, "--labels", sparse_labels, "--out", run,
                     "--max-time", "0:02", "--epochs", "1000",
                     *as_sets([*TINY_FINETUNE, "trainer.steps_per_epoch=20"]))
    assert result.exit_code == 0, result.stderr
    assert load_bundle(run / "model.rsseg")[1].classes
    ckpt = _checkpoint(run)
    assert ckpt["global_step"] < 1000 * 20
    assert ckpt["callbacks"]["TimeBudget"]["time_elapsed"]["train"] >= 2.0


def test_a_budget_shorter_than_one_step_is_one_line(many_tiles: Path, tmp_path: Path,
                                                    run_cli) -> None:
    result = run_cli("pretrain", many_tiles, "--out", tmp_path / "run", "--max-time", "0.001",
                     *as_sets(TINY_PRETRAIN))
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1
    assert line.startswith("Error: one training step takes ")
    assert "longer than the whole time budget of 0.001s" in line and "--max-time " in line
    assert not (tmp_path / "run").exists()  # nothing to resume: the same command runs again


def test_a_budget_may_change_on_resume_but_not_appear_or_vanish() -> None:
    """With a budget the LR schedule steps per optimizer step, without one per epoch: a resumed
    run may get a longer budget, but not gain or lose one (named as a config difference)."""
    def tree(*sets: str) -> dict:
        return load_config(PretrainConfig, None, list(sets)).model_dump(mode="json")

    assert config_differences(tree("trainer.max_time=60"), tree("trainer.max_time=2h")) == []
    assert config_differences(tree(), tree("trainer.max_time=60")) == [
        "trainer.max_time: None -> 60.0"]
    assert config_differences(tree("trainer.max_time=60"), tree()) == [
        "trainer.max_time: 60.0 -> None"]


@pytest.mark.parametrize("value", ["45x", "0", "-1h"])
def test_a_bad_max_time_flag_is_one_line(many_tiles: Path, tmp_path: Path, run_cli,
                                         value: str) -> None:
    for command in (["pretrain", many_tiles], ["finetune", "--tiles", many_tiles]):
        result = run_cli(*command, "--out", tmp_path / "run", "--max-time", value)
        assert result.exit_code == 1, result
        assert result.stderr.startswith(f"Error: --max-time '{value}' ")
        assert FORMS in result.stderr and len(result.stderr.splitlines()) == 1
        assert not (tmp_path / "run").exists()
