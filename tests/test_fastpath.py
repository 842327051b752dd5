"""Fast paths decided by measuring on this CPU, once, and cached: the timing rounds and their noise
guard, bf16 for prediction, and the training step's execution (precision, layout, threads, compile)
measured at the run's batch size."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from imgcls import fastpath
from imgcls.models import create_model
from imgcls.models.networks import cnn, mlp
from imgcls.runtime import use_bf16
from imgcls.training import execution
from imgcls.training.execution import Execution, Settings, choose_execution


class Clock:
    """A stopwatch that only moves when a candidate says how long it took: timings without timing."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch, tmp_path):
    """A fake clock for fastpath and execution, an empty cache of this test's own, and a CPU with bf16."""
    fake = Clock()
    monkeypatch.setattr(fastpath, "time", types.SimpleNamespace(perf_counter=fake.perf_counter))
    monkeypatch.setattr(execution, "time", types.SimpleNamespace(perf_counter=fake.perf_counter))
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(execution, "bf16_capable_cpu", lambda: True)
    monkeypatch.setattr("imgcls.runtime.bf16_capable_cpu", lambda: True)
    return fake


# -- the timing rounds ------------------------------------------------------------------------------
def test_medians_of_interleaved_rounds_ignore_a_stall(clock):
    order = []
    stalls = {"slow": [1.0] * 4 + [50.0] + [1.0] * 20}         # one round caught by other work on the machine

    def candidate(name, seconds):
        def run():
            order.append(name)
            clock.spend(stalls[name].pop(0) if name in stalls else seconds)
        return run
    timing = fastpath.timed_medians({"fast": candidate("fast", 0.5), "slow": candidate("slow", None)})
    assert timing.seconds == {"fast": 0.5, "slow": 1.0} and timing.settled
    assert timing.rounds == 2 * fastpath.ROUNDS                  # the stall spread the first rounds: more ran
    assert timing.ratio("slow", "fast") == 2.0
    assert order[:2] == ["fast", "slow"]                        # warm-up, then rounds whose order rotates
    assert order[2:4] == ["fast", "slow"] and order[4:6] == ["slow", "fast"]


def test_rounds_that_disagree_are_measured_again_and_implausible_ones_choose_nothing(clock):
    noisy = iter([1.0, 3.0] * 100)
    timing = fastpath.timed_medians({"a": lambda: clock.spend(next(noisy)), "b": lambda: clock.spend(1.0)})
    assert timing.rounds == fastpath.MAX_ROUNDS and not timing.settled
    settles = iter([1.0, 3.0] * 2 + [2.0] * 100)                # noisy at first, then steady: more rounds settle it
    timing = fastpath.timed_medians({"a": lambda: clock.spend(next(settles)), "b": lambda: clock.spend(1.0)})
    assert fastpath.ROUNDS < timing.rounds < fastpath.MAX_ROUNDS and timing.settled
    # "221.77x" once reached a cache: a candidate that many times faster is a stall elsewhere, not a speed
    assert fastpath.timed_medians({"a": lambda: clock.spend(221.77), "b": lambda: clock.spend(1.0)}) is None


# -- bf16 for prediction ----------------------------------------------------------------------------
def test_prediction_takes_bf16_where_it_measures_faster_and_caches_the_answer(clock, monkeypatch, capsys):
    gains = iter([2.5, 0.5, 0.5])
    monkeypatch.setattr(fastpath, "measure_gain", lambda net, example, channels_last: next(gains))
    net, example = cnn(1, 10, image_size=(28, 28)), torch.zeros(8, 1, 28, 28)
    assert use_bf16("auto", torch.device("cpu"), net, example)
    assert "2.50x fp32" in capsys.readouterr().err
    assert use_bf16("auto", torch.device("cpu"), net, example)          # cached: not measured again
    assert [v for v in json.loads(fastpath.cache_path().read_text()).values()] == [{"gain": 2.5, "bf16": True}]
    assert not use_bf16("auto", torch.device("cpu"), net, torch.zeros(8, 1, 32, 32))   # another shape
    monkeypatch.setattr("imgcls.runtime.bf16_capable_cpu", lambda: False)
    assert not use_bf16("auto", torch.device("cpu"), net, torch.zeros(8, 1, 20, 20))
    assert use_bf16("on", torch.device("cpu")) and not use_bf16("off", torch.device("cpu"), net, example)


def test_a_busy_machine_leaves_prediction_in_fp32_and_uncached(clock, monkeypatch):
    monkeypatch.setattr(fastpath, "measure_gain", lambda net, example, channels_last: None)
    assert not use_bf16("auto", torch.device("cpu"), cnn(1, 10, image_size=(28, 28)), torch.zeros(8, 1, 28, 28))
    assert not fastpath.cache_path().exists()


# -- the training step's execution ------------------------------------------------------------------
@pytest.fixture
def steps(clock, monkeypatch):
    """Replace the training step: each execution's step takes the seconds in steps.seconds (by name,
    default 1.0; or what a function there returns), and every step taken is recorded."""
    steps = types.SimpleNamespace(seconds={}, taken=[], clock=clock)

    def fake(net, batch, chosen, make_optimizer, threads):
        def step():
            steps.taken.append((chosen, len(batch)))
            seconds = steps.seconds.get(chosen.name, 1.0)
            clock.spend(seconds() if callable(seconds) else seconds)
        return step
    monkeypatch.setattr(execution, "_training_step", fake)
    monkeypatch.setattr(execution, "machine_busy", lambda: False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    return steps


def choose(net, settings=Settings(), run_steps=10_000, batch=256, max_seconds=None):
    return choose_execution(net, torch.zeros(batch, 1, 28, 28, dtype=torch.uint8), settings,
                            torch.device("cpu"), run_steps, lambda net: None, max_seconds)


def test_training_takes_the_fastest_setting_at_the_real_batch_and_caches_it(steps, capsys):
    net = cnn(1, 10, image_size=(28, 28))
    steps.seconds = {"fp32": 1.0, "fp32 + channels_last": 0.8, "bf16": 0.7, "bf16 + channels_last": 0.5,
                     "bf16 + channels_last + 1 thread": 0.9}
    assert choose(net) == Execution(bf16=True, channels_last=True)
    assert {size for _, size in steps.taken} == {256}                # timed at the run's batch size
    assert {e.name for e, _ in steps.taken} == {*steps.seconds}      # all four, then the thread count of the best
    said = capsys.readouterr().err
    assert "bf16 + channels_last 2.00x fp32's speed" in said and "fp32 + channels_last 1.25x" in said
    assert "1 thread(s) at 0.56x the speed of 2" in said
    steps.taken.clear()
    assert choose(net) == Execution(bf16=True, channels_last=True) and not steps.taken   # cached
    cached = next(iter(json.loads(fastpath.cache_path().read_text()).values()))
    assert cached["choice"] == "bf16 + channels_last" and cached["seconds"]["fp32"] == 1.0
    assert choose(net, batch=128) == Execution(True, True) and steps.taken   # another batch size: measured again


def test_bf16_and_fewer_threads_need_a_clear_gain_a_layout_does_not(steps):
    net = cnn(1, 10, image_size=(28, 28))
    steps.seconds = {"fp32": 1.0, "fp32 + channels_last": 0.99, "bf16": 0.98, "bf16 + channels_last": 0.97,
                     "fp32 + channels_last + 1 thread": 0.97}
    assert choose(net) == Execution(bf16=False, channels_last=True)
    steps.seconds["fp32 + channels_last + 1 thread"] = 0.9
    assert choose(net, batch=64) == Execution(channels_last=True, threads=1)


def test_only_settings_left_at_auto_are_measured(steps, monkeypatch):
    net = cnn(1, 10, image_size=(28, 28))
    steps.seconds = {"bf16 + channels_last + 2 threads": 0.5}
    assert choose(net, Settings(bf16="off", channels_last="off", threads=2)) == Execution(threads=2)
    assert not steps.taken                                          # nothing to choose: nothing timed
    assert choose(net, Settings(bf16="on", threads=2)) == Execution(bf16=True, channels_last=True, threads=2)
    assert {e.name for e, _ in steps.taken} == {"bf16 + 2 threads", "bf16 + channels_last + 2 threads"}
    steps.taken.clear()
    assert choose(mlp(1, 10, image_size=(28, 28)), Settings(threads=1)).channels_last is False   # no convolutions
    assert {e.channels_last for e, _ in steps.taken} == {False}
    monkeypatch.setattr(execution, "bf16_capable_cpu", lambda: False)
    steps.taken.clear()
    assert choose(net, batch=32) == Execution(channels_last=False)   # bf16 emulated: not a candidate
    assert not any(e.bf16 for e, _ in steps.taken)


def test_a_short_run_is_not_worth_measuring_and_a_busy_machine_measures_next_time(steps, monkeypatch):
    net = cnn(1, 10, image_size=(28, 28))
    steps.seconds = {"bf16 + channels_last": 0.5}
    assert choose(net, run_steps=10) == Execution() and len(steps.taken) == 2    # one warm-up and one timed step
    assert not fastpath.cache_path().exists()
    monkeypatch.setattr(execution, "timed_medians", lambda calls, **_: None)
    assert choose(net) == Execution() and not fastpath.cache_path().exists()


def test_a_choice_measured_while_the_machine_was_busy_serves_only_its_run(steps, monkeypatch, capsys):
    net = cnn(1, 10, image_size=(28, 28))
    steps.seconds = {"fp32 + 1 thread": 0.2}           # other work on the cores: one thread wins by 5x
    monkeypatch.setattr(execution, "machine_busy", lambda: True)
    assert choose(net, Settings(bf16="off", channels_last="off")) == Execution(threads=1)
    assert "for this run only" in capsys.readouterr().err and not fastpath.cache_path().exists()
    steps.taken.clear()
    assert choose(net, Settings(bf16="off", channels_last="off")) == Execution(threads=1)
    assert not steps.taken                              # the rest of the run (its training, after planning) takes it
    monkeypatch.setattr(execution, "_MEASURED_IN_THIS_PROCESS", {})    # the next run, in a new process
    monkeypatch.setattr(execution, "machine_busy", lambda: False)
    steps.seconds = {}                                  # quiet again: measured afresh, and kept
    assert choose(net, Settings(bf16="off", channels_last="off")) == Execution()
    assert "cached in" in capsys.readouterr().err and fastpath.cache_path().exists()


def test_measuring_stops_at_its_share_of_a_time_budget(steps):
    net = cnn(1, 10, image_size=(28, 28))
    began = steps.clock.now
    assert choose(net, max_seconds=3.0) == Execution()            # too little time to race four: the defaults
    assert steps.clock.now - began <= 3.0 and len(steps.taken) == 2
    noisy = iter([0.5, 1.5] * 1000)
    steps.seconds = {"bf16": lambda: next(noisy)}                  # rounds that never settle: 15 rounds and
    began = steps.clock.now                                        # the threads' race, without a limit
    choose(net, max_seconds=50.0, batch=128)
    assert 50.0 <= steps.clock.now - began < 50.0 + 6.0            # the round under way ends; nothing more


def test_heavy_steps_get_a_brief_race_where_the_full_one_would_not_repay(steps):
    net = cnn(1, 10, image_size=(28, 28))          # steps of seconds, as a fine-tuned EfficientNet's at 224 px
    steps.seconds = {"fp32": 3.0, "fp32 + channels_last": 1.7, "bf16": 1.6, "bf16 + channels_last": 1.4,
                     "bf16 + channels_last + 1 thread": 2.6}
    assert choose(net, run_steps=100) == Execution()                  # 30 s to measure: not even two rounds each
    began = steps.clock.now
    assert choose(net, run_steps=200, batch=32) == Execution(bf16=True, channels_last=True)
    assert steps.clock.now - began <= 0.1 * 200 * 3.0 + 3.0 + 1.7 + 1.6 + 1.4    # its share, and one round


def test_half_the_threads_far_faster_means_another_process_held_a_core(steps, capsys):
    net = cnn(1, 10, image_size=(28, 28))
    steps.seconds = {"fp32 + 1 thread": 0.25}          # 4x: the load average had not caught up yet
    assert choose(net, Settings(bf16="off", channels_last="off")) == Execution(threads=1)
    assert "for this run only" in capsys.readouterr().err and not fastpath.cache_path().exists()
    steps.seconds = {"fp32 + 1 thread": 0.9}           # a modest gain, as a quiet machine can show: kept
    assert choose(net, Settings(bf16="off", channels_last="off"), batch=64) == Execution(threads=1)
    assert fastpath.cache_path().exists()


def test_compile_is_measured_for_long_runs_and_taken_where_it_repays_compiling(steps):
    net = cnn(1, 10, image_size=(28, 28))
    settings = Settings(bf16="off", channels_last="off", threads=2, compile="auto")
    steps.seconds = {"fp32 + 2 threads": 0.1, "fp32 + 2 threads + compile": 0.05}
    assert choose(net, settings, run_steps=1000) == Execution(threads=2)           # 100 s: not worth trying
    assert not any(e.compile for e, _ in steps.taken)
    assert choose(net, settings, run_steps=100_000) == Execution(threads=2, compile=True)   # 10,000 s eager
    cached = next(iter(json.loads(fastpath.cache_path().read_text()).values()))
    assert cached["compile"] == {"compile_seconds": 0.05, "step": 0.05, "eager_step": 0.1}
    steps.seconds["fp32 + 2 threads + compile"] = 0.099
    assert choose(net, settings, run_steps=100_000).compile          # cached timings decide, not new ones
    assert not choose(net, Settings(bf16="off", channels_last="off", threads=2, compile="off"), run_steps=100_000).compile
    assert choose(net, Settings(bf16="off", channels_last="off", threads=2, compile="on"), run_steps=10).compile


def test_measuring_leaves_the_network_the_random_state_and_the_threads_alone(monkeypatch):
    monkeypatch.setattr(execution, "MEASURING_SHARE", 1e9)
    net = cnn(1, 10, image_size=(28, 28))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    threads = torch.get_num_threads()
    batch = torch.randint(0, 255, (16, 1, 28, 28), dtype=torch.uint8)
    torch.manual_seed(3)
    state = torch.random.get_rng_state()
    chosen = choose_execution(net, batch, Settings(), torch.device("cpu"), 10,
                              lambda n: torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9))
    assert isinstance(chosen, Execution)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())   # batch-norm statistics too
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(p.grad is None for p in net.parameters()) and torch.get_num_threads() == threads


def test_a_trained_network_uses_the_measured_choice(steps, monkeypatch):
    monkeypatch.setattr(execution, "MEASURING_SHARE", 1e9)
    steps.seconds = {"fp32": 1.0, "fp32 + channels_last": 0.5}
    x = np.random.default_rng(0).integers(0, 255, (64, 1, 12, 12), dtype=np.uint8)
    model = create_model("cnn", epochs=1, batch_size=32, bf16="off").fit(x, np.arange(64) % 2)
    assert model.train_state_ is not None
    assert {size for _, size in steps.taken} == {32}
    cached = next(iter(json.loads(fastpath.cache_path().read_text()).values()))
    assert cached["choice"] == "fp32 + channels_last"


def test_a_frozen_body_is_its_own_question():
    """A fine-tune's first stage trains without the body's backward pass: its timings are not the
    whole network's, so the cache keys differ."""
    net = cnn(3, 10, image_size=(24, 24))
    whole = fastpath.network_key(net)
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith("head"))
    assert fastpath.network_key(net) != whole and "trained)" in fastpath.network_key(net)
