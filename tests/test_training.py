"""The trainer: schedules, optimiser groups, exact resume (kill -9 included), early stopping, EMA,
checkpoints, YAML config, lr-find, and two-process DistributedDataParallel."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from imgcls.cli import main
from imgcls.data import ImageDataset, load_dataset
from imgcls.errors import ImgclsError
from imgcls.models import create_model, load_model
from imgcls.training import checkpoint as ckpt
from imgcls.training.config import TrainingConfig
from imgcls.training.lr_find import lr_find
from imgcls.training.schedule import lr_at
from imgcls.training.trainer import Hook, build_optimizer

IMGCLS = Path(sys.executable).with_name("imgcls")
FAST = dict(epochs=3, batch_size=64, bf16="off", hidden="64")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_onecycle_cosine_and_step_schedules():
    one = TrainingConfig(lr=1.0, schedule="onecycle")
    lrs = [lr_at(s, 100, 10, one) for s in range(100)]
    assert lrs[0] == pytest.approx(1 / 25) and max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) == 20
    assert lrs[-1] == pytest.approx(1 / 80) and all(a >= b for a, b in zip(lrs[20:], lrs[21:]))
    cos = TrainingConfig(lr=1.0, schedule="cosine", warmup=1)
    assert [lr_at(s, 100, 10, cos) for s in (0, 9)] == pytest.approx([0.1, 1.0])
    assert lr_at(55, 100, 10, cos) == pytest.approx(0.5, abs=0.02)
    step = TrainingConfig(lr=1.0, schedule="step", step_every=3, gamma=0.5)
    assert [lr_at(e * 10, 100, 10, step) for e in (0, 2, 3, 6, 9)] == pytest.approx([1, 1, 0.5, 0.25, 0.125])


def test_weight_decay_skips_norms_and_biases():
    net = create_model("cnn").build_network(1, 10, (28, 28))
    decay, no_decay = build_optimizer(net, TrainingConfig(weight_decay=0.1)).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(net.parameters()))


def test_mlp_learns_and_roundtrips(digits, tmp_path):
    model = create_model("mlp", **FAST, lr=0.1).fit(digits.train, validation=digits.val, run_dir=tmp_path)
    assert model.score(digits.test) > 0.9
    assert [r["epoch"] for r in model.history_] == [1, 2, 3]
    assert model.history_[-1]["train_loss"] < model.history_[0]["train_loss"]
    loaded = load_model(model.save(tmp_path / "m.safetensors"))
    np.testing.assert_allclose(loaded.predict_proba(digits.test), model.predict_proba(digits.test), atol=1e-6)
    assert model.embed(digits.test).shape == (len(digits.test), 64)


def test_flip_tta_averages_image_and_mirror(digits):
    model = create_model("mlp", **{**FAST, "epochs": 1}).fit(digits.train)
    images = digits.test.images[:20]
    plain = model.predict_proba(images)
    mirrored = model.predict_proba(images.flip(3))
    model.tta = "flip"
    np.testing.assert_allclose(model.predict_proba(images), (plain + mirrored) / 2, atol=1e-6)
    with pytest.raises(ImgclsError, match="unknown tta"):
        create_model("mlp", tta="rotate")


@pytest.mark.parametrize("options", [dict(augment="crop,flip", dropout=0.2), dict(ema=0.9, opt="adamw", lr=3e-3),
                                     dict(augment="rrc,randaugment,mixup=0.2,cutmix", label_smoothing=0.1),
                                     dict(lookahead=3, bn_momentum=0.5, batchnorm=True, norm_bias_lr=4,
                                          augment="crop=1,flip=alternate")])
def test_resume_is_exact(digits, tmp_path, options, stop_after):
    params = {**FAST, "epochs": 4, **options}
    whole = create_model("mlp", **params).fit(digits.train, validation=digits.val, run_dir=tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        create_model("mlp", **params).fit(digits.train, validation=digits.val, run_dir=tmp_path / "b",
                                          hooks=[stop_after(2)])
    resumed = create_model("mlp", **params).fit(digits.train, validation=digits.val, run_dir=tmp_path / "b",
                                                resume=True)
    for (name, a), b in zip(whole.net_.state_dict().items(), resumed.net_.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["val_loss"] for r in resumed.history_] == [r["val_loss"] for r in whole.history_]


def test_a_resumed_run_computes_as_its_checkpoint_did(digits, tmp_path, stop_after, monkeypatch):
    """The execution (precision, layout, threads) a run measured is in its checkpoint, and the
    resumed run takes it instead of measuring again: on a busy machine a second measurement may
    choose other threads, whose sums round differently."""
    from imgcls.training import execution, trainer
    params = {**FAST, "epochs": 3}
    monkeypatch.setattr(trainer, "choose_execution", lambda *a, **k: execution.Execution(threads=1))
    with pytest.raises(KeyboardInterrupt):
        create_model("mlp", **params).fit(digits.train, validation=digits.val, run_dir=tmp_path / "b",
                                          hooks=[stop_after(1)])
    assert ckpt.load_checkpoint(tmp_path / "b" / "checkpoints" / "last.safetensors")[1]["execution"]["threads"] == 1
    monkeypatch.setattr(trainer, "choose_execution", lambda *a, **k: pytest.fail("measured again on resume"))
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    create_model("mlp", **params).fit(digits.train, validation=digits.val, run_dir=tmp_path / "b", resume=True)
    assert seen[0] == 1


class StopAtBatch(Hook):
    """A crash after the given batch of the given epoch (1-based epoch, batches counted from 1)."""

    def __init__(self, epoch, batch):
        self.epoch, self.batch = epoch, batch

    def on_batch_end(self, trainer, batch_size, loss, correct):
        if trainer.state.epoch + 1 == self.epoch and trainer.state.batches_done == self.batch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("options", [dict(augment="crop,flip,mixup", dropout=0.2), dict(ema=0.9, accumulate=3),
                                     dict(lookahead=5, batchnorm=True, augment="flip=alternate")])
def test_resume_from_a_mid_epoch_checkpoint_is_exact(digits, tmp_path, options):
    # 1,257 images in batches of 64: 20 per epoch. Checkpoints every 4 optimiser steps; the crash
    # comes in epoch 2, a few batches after one, so the resumed run redoes those batches.
    params = {**FAST, "epochs": 3, "checkpoint_every": 4, **options}
    whole = create_model("mlp", **params).fit(digits.train, validation=digits.val, run_dir=tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        create_model("mlp", **params).fit(digits.train, validation=digits.val, run_dir=tmp_path / "b",
                                          hooks=[StopAtBatch(2, 14)])
    state = ckpt.load_checkpoint(tmp_path / "b" / "checkpoints" / "last.safetensors")[1]["state"]
    assert state["epoch"] == 1 and 0 < state["batches_done"] < 14
    resumed = create_model("mlp", **params).fit(digits.train, validation=digits.val, run_dir=tmp_path / "b",
                                                resume=True)
    for (name, a), b in zip(whole.net_.state_dict().items(), resumed.net_.state_dict().values()):
        assert torch.equal(a, b), name
    for key in ("train_loss", "train_accuracy", "val_loss"):      # the interrupted epoch's totals carried over
        assert [r[key] for r in resumed.history_] == [r[key] for r in whole.history_], key


def test_accumulated_batches_step_like_one_big_batch(digits):
    # No batch norm, dropout or augmentation: four batches of 32 accumulated are one batch of 128,
    # the epoch's short last group included.
    common = {**FAST, "epochs": 2, "hidden": "32", "lr": 0.05, "schedule": "cosine"}
    big = create_model("mlp", **{**common, "batch_size": 128}).fit(digits.train)
    small = create_model("mlp", **{**common, "batch_size": 32, "accumulate": 4}).fit(digits.train)
    assert small.train_state_.step == big.train_state_.step == 2 * math.ceil(len(digits.train) / 128)
    for (name, a), b in zip(big.net_.state_dict().items(), small.net_.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    with pytest.raises(ImgclsError, match="accumulate"):
        create_model("mlp", accumulate=0)


def test_resume_refuses_other_settings(digits, tmp_path):
    create_model("mlp", **FAST).fit(digits.train, validation=digits.val, run_dir=tmp_path)
    with pytest.raises(ImgclsError, match="other settings.*lr"):
        create_model("mlp", **{**FAST, "lr": 0.3}).fit(digits.train, run_dir=tmp_path, resume=True)


def test_early_stopping_keeps_the_best_epoch(digits, tmp_path):
    model = create_model("mlp", **{**FAST, "epochs": 8}, lr=1e-9, schedule="constant", patience=2)
    model.fit(digits.train, validation=digits.val, run_dir=tmp_path)
    state = model.train_state_
    assert state.stopped_early and state.epoch == 3 and state.best_epoch == 1


class Shorten(Hook):
    """Shortens the run to `epochs` after batch `batch` of the first epoch, and records the learning
    rate each optimiser step ran at."""

    def __init__(self, epochs, batch):
        self.epochs, self.batch, self.lrs = epochs, batch, []

    def on_batch_end(self, trainer, batch_size, loss, correct):
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"] / trainer.optimizer.param_groups[0]["lr_scale"])
        if trainer.state.epoch == 0 and trainer.state.batches_done == self.batch:
            trainer.shorten(self.epochs, "a test")


def test_a_shortened_run_ends_its_schedule_on_the_new_total(digits, tmp_path):
    params = {**FAST, "epochs": 4, "schedule": "cosine"}
    hook = Shorten(2, batch=5)
    model = create_model("mlp", **params).fit(digits.train, validation=digits.val, run_dir=tmp_path, hooks=[hook])
    state, cfg = model.train_state_, model.training_config()
    per_epoch = math.ceil(len(digits.train) / 64)
    assert len(model.history_) == 2 and state.step == 2 * per_epoch and not state.stopped_early
    assert state.shortened == {"from": 4, "to": 2, "at_step": 5, "reason": "a test"}
    assert model.epochs == 4                                   # the model's settings are left as given
    planned = [lr_at(s, 4 * per_epoch, per_epoch, cfg) for s in range(5)]
    followed = [lr_at(s, 2 * per_epoch, per_epoch, cfg) for s in range(5, 2 * per_epoch)]
    assert hook.lrs == pytest.approx(planned + followed)      # the schedule ends on the new total
    assert followed[-1] < 0.01 * cfg.lr
    assert ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.safetensors")[1]["state"]["shortened"]["to"] == 2
    with pytest.raises(ImgclsError, match="other settings"):        # a shortened run still refuses other settings
        create_model("mlp", **{**params, "lr": 0.3}).fit(digits.train, run_dir=tmp_path, resume=True)


def test_a_shortened_run_resumes_exactly(digits, tmp_path, stop_after):
    """The checkpoint records the shortening: the resumed run (planned alike, with no hook to
    shorten it) replays the shortened schedule."""
    params = {**FAST, "epochs": 5, "schedule": "cosine"}
    whole = create_model("mlp", **params).fit(digits.train, validation=digits.val, run_dir=tmp_path / "a",
                                              hooks=[Shorten(3, batch=5)])
    with pytest.raises(KeyboardInterrupt):
        create_model("mlp", **params).fit(digits.train, validation=digits.val, run_dir=tmp_path / "b",
                                          hooks=[Shorten(3, batch=5), stop_after(1)])
    resumed = create_model("mlp", **params).fit(digits.train, validation=digits.val, run_dir=tmp_path / "b",
                                                resume=True)
    assert len(resumed.history_) == len(whole.history_) == 3
    for (name, a), b in zip(whole.net_.state_dict().items(), resumed.net_.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["val_loss"] for r in resumed.history_] == [r["val_loss"] for r in whole.history_]


class CutAt(Hook):
    """Asks the trainer to cut epoch `epoch` (1-based) after its batch `batch`."""

    def __init__(self, epoch, batch):
        self.epoch, self.batch = epoch, batch

    def on_batch_end(self, trainer, batch_size, loss, correct):
        if trainer.state.epoch + 1 == self.epoch and trainer.state.batches_done == self.batch:
            trainer.cut_epoch("a test's deadline")


def test_a_cut_epoch_ends_at_an_optimiser_step_validated_and_checkpointed(digits, tmp_path):
    # 20 batches an epoch in groups of 3 (the last of 2): a cut asked after batch 7 of epoch 2 ends
    # the epoch after batch 9, where its third optimiser step is.
    params = {**FAST, "epochs": 4, "accumulate": 3}
    model = create_model("mlp", **params).fit(digits.train, validation=digits.val, run_dir=tmp_path,
                                              hooks=[CutAt(2, 7)])
    state, history = model.train_state_, model.history_
    assert [r["epoch"] for r in history] == [1, 2] and "cut_after_batches" not in history[0]
    assert history[1]["cut_after_batches"] == 9 and "val_loss" in history[1]
    assert state.stopped_early and state.stop_reason == "a test's deadline"
    assert state.step == 7 + 3 and state.epoch == 2 and state.batches_done == 0
    last = ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.safetensors")[1]["state"]
    assert last["epoch"] == 2 and last["batches_done"] == 0 and last["stopped_early"]
    best, _ = ckpt.load_checkpoint(tmp_path / "checkpoints" / "best.safetensors")
    for name, value in model.net_.state_dict().items():         # the model is the best epoch's, as saved
        assert torch.equal(value, best[f"net.{name}"]), name
    resumed = create_model("mlp", **params).fit(digits.train, validation=digits.val, run_dir=tmp_path, resume=True)
    assert resumed.history_ == history and resumed.train_state_.step == state.step     # nothing more to train
    for (name, a), b in zip(model.net_.state_dict().items(), resumed.net_.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoints_are_atomic_and_checked(tmp_path):
    path = tmp_path / "last.safetensors"
    ckpt.save_checkpoint(path, {"w": torch.arange(4.0)}, {"epoch": 1})
    tensors, meta = ckpt.load_checkpoint(path)
    assert torch.equal(tensors["w"], torch.arange(4.0)) and meta == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]    # no temp file left behind
    path.write_bytes(path.read_bytes()[:-7])                                # a torn write
    with pytest.raises(ImgclsError, match="unreadable checkpoint"):
        ckpt.load_checkpoint(path)


def test_optimizer_state_survives_flattening():
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    net(torch.ones(4, 3)).sum().backward()
    opt.step()
    tensors, groups = ckpt.flatten_optimizer(opt.state_dict())
    restored = ckpt.unflatten_optimizer(tensors, json.loads(json.dumps(groups)))
    for key, value in opt.state_dict()["state"][0].items():
        assert torch.equal(torch.as_tensor(value), restored["state"][0][key])


def test_lr_find_suggests_a_rate_in_range(digits, tmp_path):
    result = lr_find(create_model("mlp", **FAST), digits.train, tmp_path, steps=60, min_lr=1e-5, max_lr=10)
    assert 1e-5 <= result["suggested_lr"] <= 10
    assert (tmp_path / "lr_find.png").is_file() and len(json.loads((tmp_path / "lr_find.json").read_text())["lrs"]) > 10


def test_yaml_config_and_flag_override(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: mlp\nepochs: 2\nhidden: '32'\nlr: 0.2\nbf16: 'off'\nbatch_size: 64\n")
    out = tmp_path / "run"
    assert main(["train", "digits", "--config", str(recipe), "--lr", "0.05", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "mlp" and config["params"]["epochs"] == 2 and config["params"]["lr"] == 0.05
    assert (out / "config.yaml").is_file() and (out / "curves.png").is_file() and (out / "history.csv").is_file()
    recipe.write_text("model: mlp\nlearning_rate: 0.1\n")
    assert main(["train", "digits", "--config", str(recipe), "--out", str(out)]) == 2


def _train_cli(out, *extra, epochs=6, augment="crop"):
    return [str(IMGCLS), "train", "digits", "--model", "mlp", "--hidden", "64", "--epochs", str(epochs), "--lr", "0.1",
            "--batch-size", "32", "--bf16", "off", "--augment", augment, "--out", str(out), *extra]


def test_kill_minus_nine_then_resume_matches(tmp_path):
    # 40 batches an epoch, a checkpoint every 7 steps: the kill lands after a mid-epoch one. The
    # thread count is fixed: on a busy machine two fresh runs may each measure another as fastest,
    # and sums over another count of threads round differently (the resumed run takes its
    # checkpoint's execution, tested below).
    env = {**os.environ, "IMGCLS_PROGRESS": "0"}
    every = ("--checkpoint-every", "7", "--threads", "2")
    subprocess.run(_train_cli(tmp_path / "whole", *every, epochs=20), check=True, env=env, capture_output=True,
                   timeout=300)
    victim = subprocess.Popen(_train_cli(tmp_path / "killed", *every, epochs=20), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "checkpoints" / "last.safetensors"
    deadline = time.time() + 240
    while time.time() < deadline and victim.poll() is None:
        try:
            state = ckpt.load_checkpoint(last)[1]["state"] if last.is_file() else {"epoch": 0}
        except ImgclsError:          # replaced between is_file and the read: look again
            continue
        if state["epoch"] >= 2 and state["batches_done"] > 0:
            break
        time.sleep(0.02)
    assert victim.poll() is None, "training finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "killed" / "report.json").exists()
    subprocess.run(_train_cli(tmp_path / "killed", *every, "--resume", epochs=20), check=True, env=env,
                   capture_output=True, timeout=300)
    whole = json.loads((tmp_path / "whole" / "report.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "report.json").read_text())
    assert resumed["confusion_matrix"] == whole["confusion_matrix"]
    assert json.loads((tmp_path / "killed" / "history.json").read_text())[-1]["val_loss"] == \
        json.loads((tmp_path / "whole" / "history.json").read_text())[-1]["val_loss"]


def test_two_processes_match_one(tmp_path):
    env = {**os.environ, "IMGCLS_PROGRESS": "0"}
    subprocess.run(_train_cli(tmp_path / "one", epochs=4, augment="none"), check=True, env=env,
                   capture_output=True, timeout=300)
    result = subprocess.run(_train_cli(tmp_path / "two", "--nproc", "2", epochs=4, augment="none"), env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    one = json.loads((tmp_path / "one" / "report.json").read_text())["accuracy"]
    two = json.loads((tmp_path / "two" / "report.json").read_text())["accuracy"]
    assert two > 0.85 and abs(one - two) < 0.04
    assert len(json.loads((tmp_path / "two" / "history.json").read_text())) == 4   # rank 0 alone wrote it


def test_timm_models_go_through_the_same_contract(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(48) % 3
    model = create_model("timm:resnet10t", epochs=1, batch_size=16, bf16="off").fit(images, labels)
    assert model.predict_proba(images[:4]).shape == (4, 3)
    loaded = load_model(model.save(tmp_path / "timm.safetensors"))
    assert loaded.model_name == "timm:resnet10t"
    np.testing.assert_allclose(loaded.predict_proba(images[:4]), model.predict_proba(images[:4]), atol=1e-5)
    with pytest.raises(ImgclsError, match="unknown timm model"):
        create_model("timm:resnet10tt").fit(images, labels)


def test_timm_pretrained_weights_from_a_file_or_a_clear_error(tmp_path, monkeypatch):
    import timm
    from safetensors.torch import save_file
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = timm.create_model("resnet10t", num_classes=1000)
    weights = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, weights)
    model = create_model("timm:resnet10t", weights=str(weights))
    images, labels = np.zeros((8, 3, 32, 32), dtype=np.uint8), np.arange(8) % 2
    net = model.network_for(ImageDataset.from_arrays(images, labels))
    assert torch.equal(net.body.conv1[0].weight, source.conv1[0].weight)        # body from the file
    assert net.body.fc.out_features == 2                                         # a new head
    torch.testing.assert_close(net.normalize.mean.flatten(), torch.tensor(source.pretrained_cfg["mean"]))
    with pytest.raises(ImgclsError, match="--weights FILE"):
        create_model("timm:resnet10t", pretrained=True).fit(images, labels)


def test_compile_on_trains_the_same_network(digits, tmp_path, monkeypatch):
    # The real backend (inductor) needs a minute of C++ compiling on a CPU; aot_eager traces the
    # same graph (dynamo + AOTAutograd) without it.
    real_compile = torch.compile
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(model) or
                        real_compile(model, backend="aot_eager"))
    images, labels = digits.train.images, digits.train.labels
    runs = {c: create_model("mlp", hidden="32", epochs=2, batch_size=64, bf16="off", compile=c, lr=0.1)
            .fit(digits.train, run_dir=tmp_path / c) for c in ("off", "on")}
    assert len(compiled) == 1
    np.testing.assert_allclose([r["train_loss"] for r in runs["on"].history_],
                               [r["train_loss"] for r in runs["off"].history_], rtol=1e-4)
    saved = load_model(runs["on"].save(tmp_path / "compiled.safetensors"))     # plain names, no _orig_mod
    np.testing.assert_allclose(saved.predict_proba(images[:8]), runs["off"].predict_proba(images[:8]), atol=1e-4)
    with pytest.raises(ImgclsError, match="compile must be auto, on or off"):
        create_model("mlp", compile="yes").fit(images, labels)



def test_a_compiled_step_runs_only_the_batch_shape_it_was_compiled_for(digits, monkeypatch):
    # The last batch of each epoch is smaller: it runs eagerly rather than compiling again.
    seen = []

    class Compiled(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            seen.append(tuple(x.shape))
            return self.model(x)
    monkeypatch.setattr(torch, "compile", lambda model, **kw: Compiled(model))
    model = create_model("mlp", hidden="32", epochs=2, batch_size=64, bf16="off", compile="on").fit(digits.train)
    assert seen and set(seen) == {(64, *digits.train.images.shape[1:])}
    assert len(seen) == 2 * (len(digits.train) // 64) and model.train_state_.step == 2 * math.ceil(len(digits.train) / 64)
