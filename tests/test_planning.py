"""Planning a run from the data, a time budget and the machine's measured speed (imgcls.planning):
`--model auto`'s budgeted race, a named network's planned lr, batch size and epochs, and the bad
inputs. The race tests fake the measured network speeds, so that what the planner decides does not
depend on how busy the machine is; the networks still train for real, stopped by their deadlines."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.cli import main
from imgcls.data import load_dataset
from imgcls.data.dataset import ImageDataset
from imgcls.errors import ImgclsError
from imgcls.explain.faithfulness import pasted_canvases
from imgcls.models import create_model, load_model
from imgcls.models.networks import lenet5
from imgcls.planning import parse_duration
from imgcls.planning import race as race_module
from imgcls.planning import settings as settings_module
from imgcls.planning.budget import DeadlineHook, duration_text
from imgcls.planning.settings import batch_size_for, epochs_cap, planned_batch_size, unset_to_auto
from imgcls.planning.speed import NetworkSpeed
from imgcls.training.memory import step_bytes_per_image
from imgcls.training.trainer import Hook

BUDGET = 60                     # seconds: the race test's --time-budget
STATUSES = {"finished", "halved out", "not started", "failed"}


def canvases(root, n=250, side=16):
    """n digits pasted at random places on side x side noise, as class folders of PNGs (no model
    reaches 100% on its validation split, which would end the race early)."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    objects = np.round(digits.images * (255 / 16)).astype(np.uint8)
    images, labels, _ = pasted_canvases(objects, digits.target, n, side, noise=100, seed=1)
    for i, (image, label) in enumerate(zip(images.numpy(), labels.numpy())):
        path = root / str(label) / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(path)
    return root


def fake_speed(step: float, predict: float = 1e-4):
    """A network_speed that reports step seconds per optimiser step (and predict per image) without
    timing anything."""
    def measured(model, train, val=None, seconds=None):
        return NetworkSpeed(step, predict, model.batch_size)
    return measured


def fake_range_test(model, data, *, steps, min_lr, max_lr, show_progress=True):
    """A range test that suggests 0.05 at once (its steps would take real time on a busy machine)."""
    lrs = list(np.geomspace(min_lr, max_lr, steps))
    return {"lrs": lrs, "losses": [2.3] * steps, "suggested_lr": 0.05, "step_seconds": 0.01}


# -- budgets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, seconds", [("90s", 90), ("5m", 300), ("1h", 3600), ("1h30m", 5400),
                                           ("2m30s", 150), ("45", 45), (" 5M ", 300), (12.5, 12.5)])
def test_budgets_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["90x", "5 minutes", "", "m", "1h-5m", "0s", "-5m", "1.5.2s"])
def test_unreadable_budgets_are_one_line_errors(text):
    with pytest.raises(ImgclsError) as info:
        parse_duration(text)
    assert "\n" not in str(info.value)


def test_durations_print_as_the_flag_takes_them():
    assert [duration_text(s) for s in (75, 3600, 5400.2, 59.5)] == ["1m15s", "1h", "1h30m1s", "1m"]
    assert all(parse_duration(duration_text(s)) >= s for s in (75, 3600, 5400.2, 59.5))


# -- settings that follow the data -------------------------------------------------------------
def test_batch_size_follows_the_data_and_epochs_stop_at_enough_steps():
    assert [batch_size_for(n) for n in (70, 450, 1294, 54000)] == [16, 32, 64, 256]
    assert epochs_cap(21) == 100 and epochs_cap(211) == 15 and epochs_cap(10_000) == 1
    assert unset_to_auto("mlp", {"lr": 0.1}) == {"lr": 0.1, "epochs": "auto", "batch_size": "auto"}
    four_mb = int(4.1 * 2**20)             # LeNet-5's step on a 192 px photograph
    assert batch_size_for(20_000, four_mb) == 64 and batch_size_for(500, four_mb) == 32
    assert batch_size_for(54_000, 2**30) == 16                                    # never below the floor
    assert batch_size_for(54_000, 2**20) == 256                                   # a small step: the count decides
    assert unset_to_auto("knn", {"k": 3}) == {"k": 3}                              # nothing to plan
    finetune = unset_to_auto("transfer:efficientnet_lite0", {"mode": "finetune"})
    assert "lr" not in finetune and finetune["epochs"] == "auto"                   # keeps its fine-tuning rate


def test_a_steps_memory_is_what_autograd_keeps_per_image_and_caps_the_planned_batch(tmp_path):
    net = lenet5(3, 2, image_size=(192, 192))
    per_image = step_bytes_per_image(net, (3, 192, 192))
    conv1_output = 6 * 188 * 188 * 4                    # fp32 bytes of one image's first activation
    assert 4 * conv1_output < per_image < 12 * conv1_output
    assert step_bytes_per_image(lenet5(3, 2, image_size=(96, 96)), (3, 96, 96)) < per_image / 3
    photos = ImageDataset(torch.zeros((2_000, 3, 192, 192), dtype=torch.uint8), torch.arange(2_000) % 2, ["a", "b"])
    size, why = planned_batch_size("lenet5", {"batch_size": "auto"}, photos)
    assert size == 64 and "activations" in why and "128 would be near 1/16" in why


class FakeClock(Hook):
    """A clock that training moves: each batch takes step(epoch) seconds (epoch 1-based) and each
    epoch's end (validation, checkpoints) `end` seconds. Listed before the DeadlineHook, so that
    the hook reads the time after the work."""

    def __init__(self, step, end=0.2):
        self.now, self.step, self.end = 1000.0, step, end

    def __call__(self) -> float:
        return self.now

    def on_batch_end(self, trainer, batch_size, loss, correct):
        self.now += self.step(trainer.state.epoch + 1)

    def on_epoch_end(self, trainer, record):
        self.now += self.end


# 1,294 training digits in batches of 64: 21 batches an epoch. Planned at 0.1 s a batch and 0.2 s
# an epoch's end, 10 epochs fill 85% of the time (as imgcls.planning.settings.MARGIN plans them).
PLANNED_STEP, PLANNED_END, BATCHES = 0.1, 0.2, 21
DEADLINE_AFTER = 10 * (BATCHES * PLANNED_STEP + PLANNED_END) / 0.85


def timed_fit(digits, step, epochs=10, clocked=True):
    """(model, deadline hook, clock): an mlp planned as above, trained with batches taking step(epoch)
    seconds on the fake clock (clocked=False: no hooks at all)."""
    clock = FakeClock(step, end=PLANNED_END * step(1) / PLANNED_STEP)
    hook = DeadlineHook(clock() + DEADLINE_AFTER, PLANNED_STEP, PLANNED_END, clock=clock)
    model = create_model("mlp", hidden="32", epochs=epochs, batch_size=64, bf16="off", threads=1, compile="off",
                         channels_last="off")
    model.fit(digits.train, validation=digits.val, hooks=[clock, hook] if clocked else [])
    return model, hook, clock


def test_a_run_three_times_slower_than_planned_is_shortened_to_end_before_its_deadline(digits):
    model, hook, clock = timed_fit(digits, lambda epoch: 3 * PLANNED_STEP)
    state = model.train_state_
    assert clock.now <= hook.deadline
    # After 12 batches, at 0.3 s a batch and 0.6 s an epoch's end: 3 epochs of 6.6 s fit 95% of what is left.
    assert state.shortened["from"] == 10 and state.shortened["to"] == 3 and len(model.history_) == 3
    assert not state.stopped_early and hook.cut is None            # shortened, it ran its new schedule whole
    assert model.history_[-1]["lr"] < 0.05 * model.lr                # and ended it
    assert hook.record() == {"planned_epochs": 10, "epochs": 3, "planned_step_seconds": PLANNED_STEP,
                             "measured_step_seconds": pytest.approx(3 * PLANNED_STEP), "after_batches": 12}
    assert "shortened from 10 to 3 epochs after 12 steps: they took 300 ms each against 100 ms planned" in hook.note()


def test_a_run_on_time_is_untouched(digits):
    model, hook, clock = timed_fit(digits, lambda epoch: PLANNED_STEP, epochs=3)
    plain, _, _ = timed_fit(digits, lambda epoch: PLANNED_STEP, epochs=3, clocked=False)
    assert hook.note() is None and hook.record() == {} and model.train_state_.shortened == {}
    assert [r["lr"] for r in model.history_] == [r["lr"] for r in plain.history_]
    for (name, a), b in zip(plain.net_.state_dict().items(), model.net_.state_dict().values()):
        assert torch.equal(a, b), name                              # bit-identical: the hook only read its clock


def test_a_machine_that_slows_mid_epoch_has_that_epoch_cut_and_validated(digits):
    # On time for two epochs (so the re-plan keeps all ten), then 40 times slower from epoch 3.
    model, hook, clock = timed_fit(digits, lambda epoch: PLANNED_STEP if epoch < 3 else 40 * PLANNED_STEP)
    state, history = model.train_state_, model.history_
    assert clock.now <= hook.deadline and state.shortened == {}
    assert len(history) == 3 and 0 < history[-1]["cut_after_batches"] < BATCHES and "val_loss" in history[-1]
    assert state.stopped_early and "the rest of epoch 3 would end after the deadline" in state.stop_reason
    assert hook.cut == (3, history[-1]["cut_after_batches"], BATCHES)
    assert f"ended epoch 3 after {history[-1]['cut_after_batches']} of its {BATCHES} batches" in hook.note()
    assert "best epoch on validation is kept" in hook.note()


def test_a_deadline_ends_training_at_an_epoch_boundary_keeping_the_best_epoch(digits):
    # On time for two epochs, then ten times slower: epoch 3 still ends before the deadline (its
    # batches never look like overrunning it), and another like it would not.
    model, hook, clock = timed_fit(digits, lambda epoch: PLANNED_STEP if epoch < 3 else 10 * PLANNED_STEP)
    assert len(model.history_) == 3 and model.train_state_.stopped_early and clock.now <= hook.deadline
    assert "cut_after_batches" not in model.history_[-1] and hook.cut is None
    assert "time budget (another epoch of" in model.train_state_.stop_reason
    assert hook.stopped_after == 3 and "after epoch 3 of 10" in hook.note()
    assert hook.record() == {"stopped_after_epoch": 3}
    unhurried = DeadlineHook(time.monotonic() + 3600)
    create_model("mlp", hidden="32", epochs=2, bf16="off").fit(digits.train, validation=digits.val, hooks=[unhurried])
    assert unhurried.note() is None


# -- the race ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def race_run(tmp_path_factory, fast_path_cache):
    """`imgcls train DATA --time-budget 60s` on 250 pasted digits, with network steps measured (faked)
    at 10 ms and range tests answered at once: every network fits a first round, and the best may
    train again. The networks train for real, each stopped by its deadline."""
    root = tmp_path_factory.mktemp("race")
    data, out = canvases(root / "data"), root / "run"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("IMGCLS_PROGRESS", "0"), ("IMGCLS_RUNTIME", "torch"),
                            ("IMGCLS_CACHE", str(fast_path_cache)), ("IMGCLS_MODELS", str(root / "models"))):
            patch.setenv(name, value)
        patch.setattr(race_module, "pretrained_available", lambda name=None: False)
        patch.setattr(settings_module, "network_speed", fake_speed(0.01))
        patch.setattr(settings_module, "range_test", fake_range_test)
        started = time.monotonic()
        code = main(["train", str(data), "--time-budget", f"{BUDGET}s", "--out", str(out)])
        wall = time.monotonic() - started
    assert code == 0
    return data, out, wall


def test_the_leaderboard_holds_every_candidate_with_its_fate(race_run):
    _, out, _ = race_run
    rows = json.loads((out / "candidates.json").read_text())
    labels = [r["label"] for r in rows]
    assert labels[0].startswith("knn (k=") and labels[1] == "linear"
    assert {r["kind"] for r in rows} == {"baseline", "embedding", "network"}
    assert all(r["status"] in STATUSES for r in rows)
    assert all(r["reason"] for r in rows if r["status"] in ("not started", "halved out", "failed"))
    embeddings = [r for r in rows if r["kind"] == "embedding"]
    assert [r["status"] for r in embeddings] == ["not started"] * 2
    assert all("not installed" in r["reason"] for r in embeddings)
    networks = [r for r in rows if r["kind"] == "network" and r["round"] == 1]
    assert [r["model"] for r in networks] == ["vgg", "vgg", "resnet20"]
    assert any(r["status"] == "finished" for r in networks)      # at least the first network trains
    report = json.loads((out / "report.json").read_text())
    assert report["candidates"] == rows
    html = (out / "report.html").read_text()
    assert "Models considered (--model auto)" in html and all(r["label"] in html for r in rows)


@pytest.fixture
def stub_fits(monkeypatch):
    """Candidates "fitted" instantly: each validation accuracy is scores[(model, augment)] (0.5 where
    not given) plus 0.001 per epoch trained; networks measured (faked) at 10 ms a step and range
    tests answered at once. Returns scores, to fill."""
    from imgcls.fit_and_evaluate import FittedModel
    scores = {}

    def fit_and_validate(model, name, splits, out=None, *, calibration="auto", hooks=()):
        params = model.get_params()
        accuracy = scores.get((name, params.get("augment")), 0.5) + 0.001 * params.get("epochs", 0)
        return FittedModel(model, name, 0.0, {"val_accuracy": min(accuracy, 1.0)}, validation_seconds=0.001)
    monkeypatch.setattr(race_module, "fit_and_validate", fit_and_validate)
    monkeypatch.setattr(race_module, "pretrained_available", lambda name=None: False)
    monkeypatch.setattr(settings_module, "network_speed", fake_speed(0.01))
    monkeypatch.setattr(settings_module, "range_test", fake_range_test)
    return scores


def choose(data, seconds=1000.0):
    from imgcls.data.load import DataOptions
    from imgcls.planning.budget import Budget
    return race_module.choose_model(str(data), DataOptions(), Budget(seconds))


def test_networks_race_in_rounds_and_the_best_trains_again(tmp_path, stub_fits, monkeypatch):
    stub_fits.update({("knn", None): 0.6, ("linear", None): 0.4, ("vgg", "crop=1"): 0.7,
                      ("vgg", "crop=1,flip"): 0.8, ("resnet20", "crop=1,flip"): 0.75})
    monkeypatch.setattr(settings_module, "network_speed", fake_speed(0.1))       # 0.6 s an epoch of 6 steps
    choice = choose(canvases(tmp_path / "data", n=120), seconds=200)
    fates = [(c.label.split(" (k=")[0], c.round, c.status) for c in choice.candidates]
    assert fates == [("knn", 1, "finished"), ("linear", 1, "finished"),
                     ("transfer:efficientnet_lite0 kNN at 96 px", 1, "not started"),
                     ("transfer:efficientnet_lite0 probe at 96 px", 1, "not started"),
                     ("vgg 32,64,128 (crop=1)", 1, "halved out"), ("vgg 32,64,128 (crop=1, flip)", 1, "finished"),
                     ("resnet20 (crop=1, flip)", 1, "halved out"), ("vgg 32,64,128 (crop=1, flip)", 2, "finished")]
    first, longer = choice.candidates[5], choice.candidates[7]
    assert "trained again for longer" in first.reason and "below vgg 32,64,128 (crop=1, flip)" in \
        choice.candidates[4].reason
    assert choice.winner is longer and [c.winner for c in choice.candidates].count(True) == 1
    assert longer.fitted.model.epochs > first.fitted.model.epochs            # more of the budget
    assert longer.fitted.model.lr == first.fitted.model.lr == 0.05           # its first round's range test
    assert longer.fitted.model.batch_size == first.fitted.model.batch_size == 16
    rows = choice.rows
    assert all(r["estimated_seconds"] <= r["allowed_seconds"] for r in rows if r["status"] != "not started")
    assert "crop=1,flip" in choice.reproduce_text("DATA") and "--model vgg" in choice.reproduce_text("DATA")


def test_a_perfect_validation_score_ends_the_race(tmp_path, stub_fits):
    stub_fits.update({("knn", None): 1.0})
    choice = choose(canvases(tmp_path / "data", n=120))
    assert choice.winner is choice.candidates[0] and choice.winner.label.startswith("knn")
    assert choice.plan["profile"]["train"] == 86
    rest = [c for c in choice.candidates[1:] if c.kind != "embedding"]
    assert rest and all(c.status == "not started" and "already scores 100% on validation" in c.reason
                        for c in rest)


def test_too_little_time_leaves_networks_out_with_the_reason(tmp_path, stub_fits, monkeypatch):
    monkeypatch.setattr(settings_module, "network_speed", fake_speed(500.0))     # a step: 8 minutes
    choice = choose(canvases(tmp_path / "data", n=120), seconds=120)
    networks = [c for c in choice.candidates if c.kind == "network"]
    assert all(c.status == "not started" for c in networks)
    assert "s are left for training it" in networks[0].reason
    assert all("holds" in c.reason for c in networks[1:])
    assert choice.winner.kind == "baseline"


def test_the_winner_is_the_best_validation_figure_of_the_candidates_trained(race_run):
    _, out, _ = race_run
    rows = json.loads((out / "candidates.json").read_text())
    trained = [r for r in rows if r.get("val_accuracy") is not None]
    winners = [r for r in rows if r["winner"]]
    assert len(winners) == 1
    best = max(r["val_accuracy"] for r in trained)
    assert winners[0]["val_accuracy"] == best
    assert winners[0] is next(r for r in trained if r["val_accuracy"] == best)    # the first of equals
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == winners[0]["model"] and config["chosen_by"] == "auto"
    assert config["params"] == winners[0]["params"] | {"threshold": 0.0}
    assert config["planned"]["model"]["value"] == winners[0]["model"]


def test_the_test_split_is_evaluated_once_and_the_model_is_an_ordinary_one(race_run):
    data, out, _ = race_run
    ledger = json.loads((out / "test_evaluations.json").read_text())
    assert len(ledger) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["test_evaluations"] == 1
    model = load_model(out)
    config = json.loads((out / "config.json").read_text())
    assert model.model_name == config["model"]
    splits = load_dataset(data)
    assert model.score(splits.test) == pytest.approx(report["accuracy"])
    assert model.predict_proba(splits.test.images[:5]).shape == (5, 10)


def test_the_budget_holds_by_the_planners_own_accounting(race_run):
    _, out, wall = race_run
    rows = json.loads((out / "candidates.json").read_text())
    for r in rows:       # nothing started that its estimate said could not fit what was left
        if r["status"] != "not started" and r["estimated_seconds"] is not None:
            assert r["estimated_seconds"] <= r["allowed_seconds"] + 1e-6, r
    plan = json.loads((out / "report.json").read_text())["plan"]
    assert plan["time_budget"] == BUDGET and plan["budget_given"]
    assert plan["total_seconds"] >= plan["race_ended_at"] >= plan["loading_seconds"]
    assert wall < 3 * BUDGET + 60          # generous: a loaded machine stretches what was measured


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, fragment", [
    (["--time-budget", "90x"], "cannot read the time budget '90x'"),
    (["--time-budget", "1h-5m"], "write it as 90s, 5m, 1h or 1h30m"),
    (["--model", "knn", "--time-budget", "1m"], "knn has none to plan"),
    (["--model", "transfer:efficientnet_lite0", "--time-budget", "1m"], "in mode probe has none to plan"),
    (["--model", "transfer:efficientnet_lite0", "--mode", "finetune", "--lr", "auto"], "keeps its fine-tuning"),
    (["--k", "3"], "--model auto plans each candidate's own"),
    (["--val-fraction", "0"], "races its candidates on the validation split"),
])
def test_bad_input_gets_one_line(argv, fragment, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "digits", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_a_budget_too_small_for_the_knn_baseline_names_the_minimum(tmp_path, capsys):
    assert main(["train", "digits", "--time-budget", "1s", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    line = err.splitlines()[-1]          # after the profile of the data, which the race prints first
    assert line.startswith("imgcls: error: a time budget of 1s cannot fit even the kNN baseline on digits "
                           "on this machine") and "Traceback" not in err
    minimum = line.split("give --time-budget ")[1].split(" ")[0]
    assert parse_duration(minimum) > 1


def test_a_decode_longer_than_the_budget_is_said_up_front(tmp_path, monkeypatch, capsys):
    data = canvases(tmp_path / "data", n=60)
    from imgcls.planning import profile
    monkeypatch.setattr(profile.FileSurvey, "decode_seconds", lambda self, prep: 1000.0)
    assert main(["train", str(data), "--time-budget", "30s", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imgcls: error: decoding the 60 image files") and len(err.splitlines()) == 1
    assert "would take about 1000 s" in err


# -- a named network's planned settings -----------------------------------------------------------
def test_a_named_network_plans_lr_batch_and_epochs_and_resumes_with_them(tmp_path, monkeypatch):
    monkeypatch.setattr(settings_module, "network_speed", fake_speed(0.05))     # about 1 s an epoch
    out = tmp_path / "run"
    argv = ["train", "digits", "--model", "mlp", "--hidden", "32", "--bf16", "off", "--time-budget", "25s",
            "--out", str(out)]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    params, planned = config["params"], config["planned"]
    assert set(planned) == {"lr", "epochs", "batch_size"}
    assert params["batch_size"] == 64 and planned["batch_size"]["value"] == 64
    assert "range test" in planned["lr"]["how"] and params["lr"] == planned["lr"]["value"]
    advice = json.loads((out / "lr_find.json").read_text())
    assert advice["model"] == "mlp" and advice["dataset"] == "digits"
    assert params["lr"] == pytest.approx(advice["suggested_lr"], rel=1e-2)
    assert 1 <= params["epochs"] <= epochs_cap(-(-1294 // 64))
    assert "measured here" in planned["epochs"]["how"]
    report = json.loads((out / "report.json").read_text())
    assert report["lr_find"]["lr"] == params["lr"] and report["plan"]["planned"] == planned
    assert len(json.loads((out / "history.json").read_text())) <= params["epochs"]

    def no_planning(*args, **kwargs):
        raise AssertionError("a resumed run plans nothing: it takes config.json's settings")
    monkeypatch.setattr(settings_module, "network_speed", no_planning)
    monkeypatch.setattr(settings_module, "range_test", no_planning)
    assert main([*argv, "--resume"]) == 0
    again = json.loads((out / "config.json").read_text())
    assert again["params"] == params and again["planned"] == planned


def test_lr_auto_is_the_default_for_networks_and_explicit_flags_win(tmp_path, monkeypatch):
    monkeypatch.setattr(settings_module, "network_speed", fake_speed(0.01))
    out = tmp_path / "run"
    assert main(["train", "digits", "--model", "mlp", "--hidden", "32", "--epochs", "2", "--batch-size", "100",
                 "--bf16", "off", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["params"]["epochs"] == 2 and config["params"]["batch_size"] == 100
    assert set(config["planned"]) == {"lr"} and config["time_budget"] is None
    assert (out / "lr_find.json").is_file()


def test_a_recipe_trains_as_it_says_unless_it_states_a_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(settings_module, "network_speed", fake_speed(0.01))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: mlp\nhidden: '32'\nepochs: 2\nbf16: 'off'\n")
    out = tmp_path / "plain"
    assert main(["train", "digits", "--config", str(recipe), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["planned"] == {} and config["params"]["epochs"] == 2
    assert "lr" not in config["params"] and "batch_size" not in config["params"]     # the model's defaults
    assert not (out / "lr_find.json").exists()
    monkeypatch.setattr(settings_module, "network_speed", fake_speed(0.05))
    recipe.write_text("model: mlp\nhidden: '32'\nlr: 0.1\nbf16: 'off'\ntime_budget: 20s\n")
    out = tmp_path / "budgeted"
    assert main(["train", "digits", "--config", str(recipe), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["time_budget"] == 20 and set(config["planned"]) == {"epochs", "batch_size"}
    assert config["params"]["lr"] == 0.1


# -- shared embeddings -----------------------------------------------------------------------------
def test_a_backbones_knn_and_probe_share_its_embeddings(digits, monkeypatch):
    from imgcls.models import transfer
    calls = []
    real = transfer.predict_logits

    def counted(net, images, **kwargs):
        calls.append(len(images))
        return real(net, images, **kwargs)
    monkeypatch.setattr(transfer, "predict_logits", counted)
    train, val = digits.train.subset(torch.arange(40)), digits.val.subset(torch.arange(10))
    with transfer.shared_embeddings():
        for mode in ("knn", "probe"):
            model = create_model("transfer:efficientnet_lite0", mode=mode, input_size=32, bf16="off")
            model.fit(train)
            model.predict(val)
    # train embedded once, val once (by kNN; the probe predicts through its head, not embeddings())
    assert sorted(calls) == [10, 40]
    calls.clear()
    model = create_model("transfer:efficientnet_lite0", mode="knn", input_size=32, bf16="off").fit(train)
    assert calls == [40]                  # outside the context nothing is shared
