"""--bf16 auto (and, in fp32, --channels-last auto) decides by measuring the network on this CPU,
once, and caches the answer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from imgcls import fastpath
from imgcls.models import create_model
from imgcls.runtime import use_bf16, use_channels_last
from imgcls.models.networks import cnn


@pytest.fixture
def timings(monkeypatch, tmp_path):
    """Replace the stopwatch: fp32 and bf16 steps take the seconds given (by precision, or by
    (bf16, channels_last)), and calls are counted; an empty cache of this test's own."""
    calls = []
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path / "cache"))

    def fake(net, batch, train, *, bf16, channels_last):
        calls.append((bf16, channels_last, train))
        return timings.seconds.get((bf16, channels_last), timings.seconds.get(bf16))
    timings.seconds = {False: 1.0, True: 0.4}
    monkeypatch.setattr(fastpath, "_seconds", fake)
    monkeypatch.setattr(fastpath, "bf16_capable_cpu", lambda: True)
    monkeypatch.setattr("imgcls.runtime.bf16_capable_cpu", lambda: True)
    timings.calls = calls
    return timings


def test_auto_takes_bf16_where_it_measures_faster_and_caches_the_answer(timings, capsys):
    net, example = cnn(1, 10, image_size=(28, 28)), torch.zeros(8, 1, 28, 28)
    assert use_bf16("auto", torch.device("cpu"), net, example, train=True)
    # convolutional: fp32 both ways, bf16 with channels_last
    assert timings.calls == [(False, False, True), (False, True, True), (True, True, True)]
    assert "2.50x fp32" in capsys.readouterr().err
    timings.seconds = {False: 1.0, True: 2.0}                        # measured again, it would lose now
    assert use_bf16("auto", torch.device("cpu"), net, example, train=True)   # but the cached answer stands
    assert len(timings.calls) == 3
    cached = json.loads(fastpath.cache_path().read_text())
    assert [v for v in cached.values()] == [{"gain": 2.5, "bf16": True, "fp32_channels_last": False}]
    # another input shape, or inference instead of training, is another question
    assert not use_bf16("auto", torch.device("cpu"), net, torch.zeros(8, 1, 32, 32), train=True)
    assert not use_bf16("auto", torch.device("cpu"), net, example, train=False)
    assert len(timings.calls) == 9


def test_auto_stays_fp32_when_bf16_is_not_faster_enough_or_the_cpu_lacks_it(timings, monkeypatch):
    net, example = cnn(1, 10, image_size=(28, 28)), torch.zeros(8, 1, 28, 28)
    timings.seconds = {False: 1.0, True: 1.0 / (fastpath.MIN_GAIN - 0.05)}
    assert not use_bf16("auto", torch.device("cpu"), net, example, train=True)
    monkeypatch.setattr("imgcls.runtime.bf16_capable_cpu", lambda: False)
    assert not use_bf16("auto", torch.device("cpu"), net, torch.zeros(8, 1, 20, 20), train=True)
    assert use_bf16("on", torch.device("cpu")) and not use_bf16("off", torch.device("cpu"), net, example)


def test_measuring_leaves_the_network_and_the_random_state_alone():
    net = cnn(1, 10, image_size=(28, 28))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = torch.rand(8, 1, 28, 28) * 255
    torch.manual_seed(3)
    state = torch.random.get_rng_state()
    gain = fastpath.measure_gain(net, images, train=True, channels_last=True)
    assert gain > 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())   # batch-norm statistics too
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(p.grad is None for p in net.parameters())


def test_a_trained_network_uses_the_measured_choice(timings):
    x = np.random.default_rng(0).integers(0, 255, (64, 1, 12, 12), dtype=np.uint8)
    model = create_model("cnn", epochs=1, batch_size=32).fit(x, np.arange(64) % 2)
    assert model.train_state_ is not None
    assert (False, False, True) in timings.calls and (True, True, True) in timings.calls


def test_fp32_takes_channels_last_where_it_measures_faster_and_bf16_must_beat_that(timings, capsys):
    """EfficientNet-Lite0's case: its depthwise convolutions train far faster in channels_last, and
    bf16 is weighed against that, not against the slow contiguous layout."""
    net, example = cnn(3, 10, image_size=(24, 24)), torch.zeros(8, 3, 24, 24)
    timings.seconds = {(False, False): 1.0, (False, True): 0.4, (True, True): 0.5}
    cpu = torch.device("cpu")
    assert not use_bf16("auto", cpu, net, example, train=True)                  # 0.8x the fast fp32
    assert use_channels_last("auto", cpu, net, False, example, train=True)
    assert "fp32 + channels_last" in capsys.readouterr().err and len(timings.calls) == 3
    assert not use_channels_last("auto", cpu, net, False)                        # nothing to measure on
    assert not use_channels_last("off", cpu, net, False, example, train=True)
    # a frozen body (a fine-tune's first stage) trains without its backward: measured on its own
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith("head"))
    timings.seconds = {(False, False): 1.0, (False, True): 1.0, (True, True): 1.0}
    assert not use_channels_last("auto", cpu, net, False, example, train=True)
    assert len(timings.calls) == 6


def test_a_network_trains_in_fp32_channels_last_where_measured_faster(timings):
    timings.seconds = {(False, False): 1.0, (False, True): 0.4, (True, True): 0.5}
    x = np.random.default_rng(0).integers(0, 255, (64, 3, 12, 12), dtype=np.uint8)
    model = create_model("cnn", epochs=1, batch_size=32).fit(x, np.arange(64) % 2)
    conv = next(m for m in model.net_.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
