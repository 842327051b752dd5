"""The training loop for neural classifiers.

Data stays on the device as uint8 tensors; each batch is gathered by index, augmented as a
whole (imgcls.training.augment; mixup and cutmix turn its labels into soft targets) and
normalised inside the network. Epoch e's order comes from a generator seeded with (seed, e)
and every random draw of its batch b from generators seeded with (seed, e, b), so a run
resumed from any checkpoint, one written mid-epoch (checkpoint_every) included, replays the
rest exactly. With accumulate N, N batches' gradients make one optimiser step. Under
torchrun, each process gathers, decodes and augments only its own share of every batch (with
its own seeded draws), DistributedDataParallel averages the gradients, validation is split
across the processes and its outputs gathered, and rank 0 alone writes checkpoints and history.
In one process a hook may shorten the run (Trainer.shorten: the schedule follows the new total,
and the checkpoint records it for a resume) or end an epoch at its next optimiser step
(Trainer.cut_epoch): a deadline does both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from imgcls.data.dataset import ImageDataset
from imgcls.data.stream import image_batches, readable_sample
from imgcls.data.splits import balanced_order, class_balance_weights
from imgcls.errors import ImgclsError
from imgcls.task import SingleLabel, Task
from imgcls.run_folder import RunFolder
from imgcls.runtime import predict_logits, resolve_device, rows_per_read
from imgcls.training import checkpoint as ckpt
from imgcls.training import distributed
from imgcls.training.augment import AugmentConfig, augment_batch, crop_boxes, mix
from imgcls.training.config import TrainingConfig, monitored
from imgcls.training.execution import Execution, Settings, choose_execution
from imgcls.training.initialisation import WHITENING_PIXELS, dirac_convolutions, whiten_first_convolution
from imgcls.training.lookahead import Lookahead
from imgcls.training.memory import release_free_memory
from imgcls.training.schedule import image_size_at, lr_at

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
NORMALISATIONS = (*BATCH_NORMS, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
RELEASE_EVERY = 20       # optimiser steps between giving the allocator's free pages back (imgcls.training.memory)


@dataclass
class TrainState:
    epoch: int = 0                   # epochs completed
    step: int = 0                    # optimiser steps taken
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    stop_reason: str = ""            # why it stopped before its last epoch (patience, or a hook's deadline)
    history: list[dict] = field(default_factory=list)
    batches_done: int = 0            # batches of the current epoch done (non-zero in a mid-epoch checkpoint)
    unreadable: list = field(default_factory=list)   # streamed files that failed to decode: [name, reason]
    epoch_totals: list = field(default_factory=lambda: [0.0, 0, 0])   # its summed loss, correct, seen
    shortened: dict = field(default_factory=dict)    # Trainer.shorten's record: {"from", "to", "at_step", "reason"}


class Hook:
    """Extras (progress, history files) subscribe to the loop's events."""

    def on_train_begin(self, trainer: Trainer) -> None: ...
    def on_batch_end(self, trainer: Trainer, batch_size: int, loss: float, correct: int) -> None: ...
    def on_epoch_end(self, trainer: Trainer, record: dict) -> None: ...
    def on_train_end(self, trainer: Trainer) -> None: ...


class Trainer:
    def __init__(self, net: nn.Module, cfg: TrainingConfig, run_dir: str | Path | None = None,
                 hooks: list[Hook] | tuple = (), lr_scales: dict[str, float] | None = None,
                 measure_within: float | None = None):
        """lr_scales: parameter name (as net.named_parameters() gives it) -> the fraction of the
        scheduled learning rate it learns at (a fine-tuned body, say); 1 for the others.
        measure_within: seconds that choosing the execution may take at most (a time budget's share)."""
        self.cfg, self.net, self.hooks = cfg, net, list(hooks)
        self.measure_within = measure_within
        self.lr_scales = dict(lr_scales or {})
        self._best_weights = None        # the best epoch's weights, kept in memory when there is no run_dir
        self.run_dir = Path(run_dir) if run_dir else None
        self.device = resolve_device(cfg.device)
        self.execution = Execution()     # decided in setup, on the training data
        self.lookahead: Lookahead | None = None
        self._flip_sides: torch.Tensor | None = None   # alternating flip: the images flipped in even epochs
        self.augment = AugmentConfig.from_spec(cfg.augment)
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self.state = TrainState()
        self.class_weight = None         # balance=weights: per-class weights (multi-label: pos_weight)
        self.task: Task = SingleLabel()  # the training data's: decides loss and validation figures
        self._cut = False                # cut_epoch asked: the epoch under way ends at its next optimiser step

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, train: ImageDataset, val: ImageDataset | None = None, resume: bool = False) -> TrainState:
        self.setup(train, self._checkpointed_execution() if resume else None)
        if resume:
            self._restore()
        images, labels = train.images.to(self.device), train.labels.to(self.device)
        self._names = train.names("train") if train.streamed else None
        self._emit("on_train_begin")
        try:
            while self.state.epoch < self.cfg.epochs and not self.state.stopped_early:
                start = time.perf_counter()
                record = self._train_epoch(images, labels)
                record["seconds"] = time.perf_counter() - start
                trained = min(len(train), record.get("cut_after_batches", math.inf) * self.cfg.batch_size)
                record["images_per_second"] = trained / record["seconds"]
                if val is not None and len(val):
                    record.update(self._validated(val))
                self._end_epoch(record)
        finally:
            self._restore_threads()
            self._emit("on_train_end")     # also when interrupted: hooks close their displays
        self._load_best()
        return self.state

    def _train_epoch(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        epoch, cfg, state = self.state.epoch, self.cfg, self.state
        all_positions = self.epoch_batches(labels, epoch)
        batches, samples = len(all_positions), sum(len(p) for p in all_positions)
        self.batches_this_epoch = batches
        self.net.train()
        self._totals = EpochTotals(state.epoch_totals if state.batches_done else [0.0, 0, 0])
        self._boundary = state.batches_done          # where the last optimiser step left the epoch
        # Each rank gathers (and decodes, and augments) only its own share of every batch.
        shares = [batch[self.rank::self.world] for batch in all_positions[state.batches_done:]]
        gathered = self._gathered(images, labels, shares, epoch, state.batches_done)
        try:
            for index, (batch, images_in, labels_in) in enumerate(gathered, start=state.batches_done):
                torch.manual_seed(derived_seed(cfg.seed, epoch, index, self.rank))   # dropout and friends
                x, y = self.training_batch(images_in, labels_in, self.batch_generator(epoch, index), batch, epoch,
                                           cropped=not isinstance(images, torch.Tensor))
                first = index - index % cfg.accumulate                 # the group of batches this one is in
                last = min(first + cfg.accumulate, batches) - 1
                group_samples = min((last + 1) * cfg.batch_size, samples) - first * cfg.batch_size
                loss, right = self.step(x, y, self._lr(), update=index == last,
                                        share=len(batch) * self.world / group_samples)
                self._totals.add(loss * len(y), right, len(y))
                state.batches_done = index + 1
                self._emit("on_batch_end", len(y), loss, right)
                if index % RELEASE_EVERY == RELEASE_EVERY - 1:
                    release_free_memory()
                if index == last:
                    self._boundary = index + 1
                    if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and index + 1 < batches:
                        self._save_progress()
                    if self._cut:
                        break
        except (WorkerDied, RuntimeError) as exc:
            if not isinstance(exc, WorkerDied) and "DataLoader worker" not in str(exc):
                raise
            raise self._stopped_by(exc) from None
        finally:
            gathered.close()          # a cut epoch leaves batches undecoded: their workers stop now
        loss_sum, correct, seen = self._synced_totals()
        done, self._cut = state.batches_done, False
        state.batches_done, state.epoch_totals = 0, [0.0, 0, 0]
        record = {"epoch": epoch + 1, "lr": self._lr(), "train_loss": loss_sum / max(seen, 1),
                  "train_accuracy": correct / max(seen, 1)}
        return record | ({"cut_after_batches": done} if done < batches else {})

    def _validated(self, val: ImageDataset) -> dict:
        """evaluate(val); a worker decoding it that dies stops the run with one line: the epoch's
        end was not saved, so --resume continues from the last checkpoint."""
        try:
            return self.evaluate(val)
        except RuntimeError as exc:
            if "DataLoader worker" not in str(exc):
                raise
            raise self._stopped_by(WorkerDied.from_loader(exc, what="validation")) from None

    def _stopped_by(self, exc: Exception) -> ImgclsError:
        """A decoding worker died (killed for memory, say). When the trainer learnt of it while
        waiting for a batch, right after an optimiser step, nothing has moved since that step, so
        `last` saves the exact position. Learnt of elsewhere (PyTorch's SIGCHLD handler raises
        mid-forward, say), batch-norm statistics may have moved: the last checkpoint stands."""
        if not isinstance(exc, WorkerDied):
            exc = WorkerDied.from_loader(exc)
        where = f"at epoch {self.state.epoch + 1}, batch {self.state.batches_done + 1}"
        exact = exc.while_waiting and self.state.batches_done == self._boundary
        if exact and self.world == 1 and self.run_dir:
            self._save_progress()
            return ImgclsError(f"{exc} {where}; its progress is saved: run the same command with --resume")
        hint = "; run the same command with --resume to continue from its last checkpoint" if self.run_dir else ""
        return ImgclsError(f"{exc} {where}{hint}")

    def batch_generator(self, epoch: int, index: int) -> torch.Generator:
        """Batch `index`'s random draws (augmentation, mixup): one stream per rank and batch, so a
        rank augments its own share only and a resumed run replays the same draws."""
        if self.world == 1:
            return generator(self.cfg.seed, epoch, index)
        return generator(self.cfg.seed, epoch, index, self.rank, self.world)

    def _synced_totals(self) -> list:
        """The epoch's loss sum, correct and seen over all ranks so far; also shares the files any
        rank found unreadable, so that rank 0's checkpoints and report list them all."""
        totals = self._totals.synced(self.world, self.device)
        self.state.epoch_totals = totals
        if self.world > 1:
            everyone = [None] * self.world
            dist.all_gather_object(everyone, self.state.unreadable)
            known = {}
            for found in everyone:
                known.update({name: reason for name, reason in found})
            self.state.unreadable = [[name, reason] for name, reason in known.items()]
        return totals

    def _gathered(self, images, labels: torch.Tensor, positions: list[torch.Tensor], epoch: int, first: int):
        """(positions, uint8 images, labels) of each batch (batch `first` of epoch `epoch` onwards):
        gathered from memory, or decoded from the files by DataLoader workers, a few batches ahead;
        a file that no longer decodes is left out of its batch and listed in state.unreadable. The
        workers also cut a streamed batch's random resized crops (rrc), drawn from the batch's
        generator as augment_batch draws them (crop_boxes), so each image is decoded and resampled
        once, and its batch arrives cropped."""
        if not isinstance(images, torch.Tensor):
            crops = [crop_boxes(len(p), images.prep.size, self.augment, self.batch_generator(epoch, index))
                     for index, p in enumerate(positions, start=first)] if self.augment.rrc_scale else None
            decoded = images.batches([p.cpu() for p in positions], crops=crops)
            for batch, (x, ok) in zip(positions, _watched(decoded)):
                if not ok.all():     # files that stopped decoding leave their batch (else: no copy of it)
                    self._note_unreadable(batch.cpu()[~ok], images)
                    batch, x = batch[ok.to(batch.device)], x[ok]
                yield batch, x.to(self.device), labels[batch]
            return
        for batch in positions:
            yield batch, images[batch], labels[batch]

    def _note_unreadable(self, positions: torch.Tensor, images) -> None:
        known = {name for name, _ in self.state.unreadable}
        for position in positions.tolist():
            name = self._names[position]
            if name not in known:
                self.state.unreadable.append([name, images.unreadable_reason(position)])

    def batch_count(self, samples: int) -> int:
        """Batches in an epoch of `samples`: a last scrap too small to shard (a lone sample breaks
        batch norm) is dropped."""
        whole, rest = divmod(samples, self.cfg.batch_size)
        return whole + (rest >= 2 * self.world)

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float, update: bool = True,
             share: float = 1.0) -> tuple[float, int]:
        """Forward and backward on a batch; with update, the optimiser step at learning rate lr.
        Returns (loss, number correct).

        Gradient accumulation: each of a group's batches adds `share` of its gradient (its share of
        the group's samples, so the group's step equals one on all of them at once), and the last
        one updates. y holds labels, or soft targets after mixup/cutmix
        (then "correct" counts the dominant label)."""
        # A compiled step runs only batches of the shape it was compiled for: an epoch's last, smaller
        # batch (or a progressive size) runs eagerly instead of compiling again.
        model = self.model if self._compiled_shape in (None, tuple(x.shape)) else self.eager_model
        with self._autocast():
            logits = model(x)
            loss = self.task.loss(logits, y, weight=self.class_weight, label_smoothing=self.cfg.label_smoothing)
        quiet = self.world > 1 and not update       # DDP: all-reduce only on the updating batch
        with self.eager_model.no_sync() if quiet else contextlib.nullcontext():
            (loss * share if share != 1 else loss).backward()
        if update:
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            if self.cfg.clip_grad > 0:
                nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.clip_grad)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.state.step += 1
            if self.lookahead is not None:
                self.lookahead.after_step(self.net, self.state.step, self.total_steps)
            if self.ema is not None:
                self.ema.update_parameters(self.net)
        return loss.item(), int(self.task.correct(logits.detach(), y))

    def _end_epoch(self, record: dict) -> None:
        state = self.state
        state.epoch += 1
        state.history.append(record)
        improved = self._track_best(record)
        if improved and not self.run_dir:
            self._best_weights = {k: v.detach().clone() for k, v in self.eval_net.state_dict().items()}
        if self.rank == 0 and self.run_dir:
            if improved:
                self._save("best")
            self._save("last")
        release_free_memory()            # validation's batches, before the next epoch's workers fork
        self._emit("on_epoch_end", record)

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, data: ImageDataset) -> dict:
        """Validation figures on data. Under torchrun each rank runs its own slice of data and the
        outputs are gathered, so every rank reaches the same figures (and the same early-stopping
        decision) having computed only its share. Streamed images are decoded by the workers; a
        file that no longer decodes is left out of the figures and listed in state.unreadable."""
        if self.world > 1:
            distributed.broadcast_buffers(self.eval_net)   # batch-norm statistics: rank 0's, the saved ones
        start, stop = distributed.my_slice(len(data), self.rank, self.world)
        if isinstance(data.images, torch.Tensor):
            logits = predict_logits(self.eval_net, data.images[start:stop], device=self.device, bf16=self.bf16,
                                    channels_last=self.channels_last)
            ok = torch.ones(len(logits), dtype=torch.bool)
        else:
            logits, ok = self._streamed_logits(data, start, stop)
        if self.world > 1:   # the ok flags travel as one more column
            both = torch.cat([logits.reshape(stop - start, self.num_classes), ok[:, None].float()], 1)
            both = distributed.gather_rows(both, len(data), self.device)
            logits, ok = both[:, :-1], both[:, -1].bool()
        if not ok.all():
            return self.task.validation_metrics(logits[ok], data.labels[ok])
        return self.task.validation_metrics(logits, data.labels)

    def _streamed_logits(self, data: ImageDataset, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, ok) of rows start:stop of a streamed dataset, decoded by the workers a read at a
        time (as evaluation reads them, so memory holds a few reads, never the split)."""
        mine = data.images.subset(range(start, stop))
        logits = torch.zeros(len(mine), self.num_classes)
        ok = torch.zeros(len(mine), dtype=torch.bool)
        names = data.names("val")
        for rows, images, unreadable in image_batches(mine, rows_per_read(mine.shape)):
            if len(rows):
                logits[rows] = predict_logits(self.eval_net, images, device=self.device, bf16=self.bf16,
                                              channels_last=self.channels_last)
                ok[rows] = True
            known = {name for name, _ in self.state.unreadable}
            self.state.unreadable += [[names[start + row], reason] for row, reason in unreadable
                                      if names[start + row] not in known]
        return logits, ok

    @property
    def eval_net(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.net

    # -- pieces -------------------------------------------------------------------------------
    def setup(self, train: ImageDataset, execution: Execution | None = None) -> None:
        """Device, execution (precision, layout, threads, compile; measured unless given: a resumed
        run takes its checkpoint's, so it computes exactly as before), optimiser, EMA, DDP wrapper,
        step counts and class weights for training on train."""
        n_train = len(train)
        self.batches_per_epoch = max(1, math.ceil(n_train / self.cfg.batch_size))
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / self.cfg.accumulate)
        self.total_steps = self.steps_per_epoch * self.cfg.epochs
        self.execution = execution or self._decide_execution(train)
        release_free_memory()            # the measured copies' memory, before data workers fork
        if self.execution.threads:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(self.execution.threads)
        self.task = train.task
        self.num_classes = train.num_classes
        self.monitor = monitored(self.cfg.monitor, self.task)
        if self.cfg.balance == "weights":
            self.class_weight = class_balance_weights(train.labels, train.num_classes).to(self.device)
        torch.manual_seed(self.cfg.seed)
        self._initialise(train)
        self.net.to(self.device)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.lookahead = Lookahead(self.net, self.cfg.lookahead) if self.cfg.lookahead else None
        self.optimizer = build_optimizer(self.net, self.cfg, self.lr_scales)
        self.ema = None
        if self.cfg.ema > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
            self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema), use_buffers=True)
        self.model = self.net
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.eager_model, self._compiled_shape = self.model, None
        if self.execution.compile:      # the training step only; evaluation runs the plain network
            self.model = torch.compile(self.model)
            self._compiled_shape = (len(range(self.rank, self.cfg.batch_size, self.world)),
                                    train.preprocessing.channels, *train.preprocessing.size)
        self.optimizer.zero_grad(set_to_none=True)

    def _initialise(self, train: ImageDataset) -> None:
        """The initialisations and batch-norm momentum the config asks for (a resumed run's
        checkpoint then replaces the weights), and the alternating flip's sides."""
        cfg, whitened = self.cfg, None
        if cfg.whiten:
            shape = train.preprocessing.size
            count = max(16, min(5000, WHITENING_PIXELS // (shape[0] * shape[1])))
            whitened = whiten_first_convolution(self.net, readable_sample(train.images, count))
        if cfg.dirac:
            dirac_convolutions(self.net, skip=whitened)
        if cfg.bn_momentum:
            for m in self.net.modules():
                if isinstance(m, BATCH_NORMS):
                    m.momentum = cfg.bn_momentum
        if cfg.progressive_size < 1:
            self._check_resizable(train)
        self._flip_sides = self._sides(len(train))

    def _sides(self, samples: int) -> torch.Tensor | None:
        """Which images the alternating flip mirrors in even epochs (a random half, from the seed)."""
        if not self.augment.alternating_flip:
            return None
        return torch.rand(samples, generator=generator(self.cfg.seed, -1)) < 0.5

    def _check_resizable(self, train: ImageDataset) -> None:
        size = image_size_at(0, train.preprocessing.size, self.cfg)
        probe = torch.zeros(2, train.preprocessing.channels, *size)
        was_training = self.net.training
        try:
            with torch.no_grad():
                self.net.eval()(probe)
        except (RuntimeError, ValueError) as exc:
            raise ImgclsError(f"progressive resizing trains on {size[0]}x{size[1]} images at first, and this network "
                              f"takes only its full size ({str(exc).splitlines()[0]}); choose a network with global "
                              "pooling (vgg, resnet*) or progressive_size 1") from None
        finally:
            self.net.train(was_training)

    @property
    def bf16(self) -> bool:
        return self.execution.bf16

    @property
    def channels_last(self) -> bool:
        return self.execution.channels_last

    def _decide_execution(self, train: ImageDataset) -> Execution:
        """Measured on rank 0 (on copies of the network, a batch of train of the size each rank
        steps on) and shared, so every rank trains alike."""
        choice = [None]
        if self.rank == 0:
            size = min(math.ceil(self.cfg.batch_size / self.world), len(train))
            batch = train.images[:size] if not train.streamed else readable_sample(train.images, size)
            settings = Settings(self.cfg.bf16, self.cfg.channels_last, self.cfg.threads, self.cfg.compile)
            choice = [choose_execution(self.net, batch.to(self.device), settings, self.device,
                                       self.total_steps * self.cfg.accumulate,
                                       lambda net: build_optimizer(net, self.cfg, self.lr_scales),
                                       self.measure_within)]
        if self.world > 1:
            dist.broadcast_object_list(choice, src=0)
        return choice[0]

    def _restore_threads(self) -> None:
        if hasattr(self, "_threads_before"):
            torch.set_num_threads(self._threads_before)
            del self._threads_before

    def augmented(self, x: torch.Tensor, gen: torch.Generator, cropped: bool = False,
                  flips: torch.Tensor | None = None) -> torch.Tensor:
        if not self.augment.changes_images:
            return x.float()
        return augment_batch(x, self.augment, gen, cropped=cropped, flips=flips)

    def training_batch(self, images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator,
                       positions: torch.Tensor | None = None, epoch: int = 0, cropped: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's augmented images (float, 0..255) and targets: the labels, or soft targets under
        mixup/cutmix. positions (in the training data) and epoch decide the alternating flip and
        the progressive size; cropped: the images come with their random resized crops cut
        (streamed batches)."""
        flips = None
        if self._flip_sides is not None and positions is not None:
            flips = self._flip_sides[positions.cpu()] ^ bool(epoch % 2)
        x, y = mix(self.augmented(images, gen, cropped, flips), labels, self.augment, gen, self.task.multi_label,
                   self.num_classes)
        size = image_size_at(epoch, x.shape[2:], self.cfg)
        if size != tuple(x.shape[2:]):
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x, y

    def epoch_batches(self, labels: torch.Tensor, epoch: int) -> list[torch.Tensor]:
        """Epoch `epoch`'s batches as positions in the training data: its order (drawn from a
        generator seeded with (seed, epoch)) cut into batch_size pieces, a last scrap too small to
        shard left out."""
        order = self._epoch_order(labels, generator(self.cfg.seed, epoch)).to(self.device)
        size = self.cfg.batch_size
        return [order[i * size:(i + 1) * size] for i in range(self.batch_count(len(order)))]

    def preview_batch(self, train: ImageDataset, epoch: int = 0, index: int = 0
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(positions, augmented images, targets) of batch `index` of epoch `epoch`, as `fit` would
        train on them, without training: the same order, gathering, generator and augmentation
        (`imgcls show batch` draws its grid from here), as one process trains."""
        self.task, self.num_classes = train.task, train.num_classes     # what setup learns from the data
        self._names = train.names("train") if train.streamed else None
        batches = self.epoch_batches(train.labels.to(self.device), epoch)
        if not 0 <= index < len(batches):
            raise ImgclsError(f"epoch {epoch} has {len(batches)} batch(es) of {self.cfg.batch_size}; "
                              f"there is no batch {index}")
        images = train.images.to(self.device) if isinstance(train.images, torch.Tensor) else train.images
        positions, images_in, labels_in = next(self._gathered(images, train.labels.to(self.device),
                                                              [batches[index]], epoch, index))
        self._flip_sides = self._sides(len(train))
        x, y = self.training_batch(images_in, labels_in, self.batch_generator(epoch, index), positions, epoch,
                                   cropped=train.streamed)
        return positions, x, y

    def _epoch_order(self, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The epoch's sample order: a shuffle, or with balance=sampler as many draws with replacement,
        each class equally likely. Both come from gen, so resuming at epoch e replays it exactly."""
        if self.cfg.balance == "sampler":
            return balanced_order(labels.cpu(), gen)
        return torch.randperm(len(labels), generator=gen)

    def _lr(self) -> float:
        return lr_at(min(self.state.step, self.total_steps - 1), self.total_steps, self.steps_per_epoch, self.cfg)

    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _track_best(self, record: dict) -> bool:
        state, key = self.state, self.monitor
        if key not in record:     # no validation data: the last epoch is the best
            state.best_epoch = state.epoch
            return True
        value = -record[key] if key.endswith("loss") else record[key]
        if state.best is None or value > state.best:
            state.best, state.best_epoch, state.bad_epochs = value, state.epoch, 0
            return True
        state.bad_epochs += 1
        if self.cfg.patience and state.bad_epochs >= self.cfg.patience:
            self.stop(f"no {key} improvement for {self.cfg.patience} epochs")
        return False

    def stop(self, reason: str) -> None:
        """End training after the epoch under way (early stopping, or a hook: a deadline, say); the
        best epoch's weights are kept as usual."""
        self.state.stopped_early, self.state.stop_reason = True, reason

    def cut_epoch(self, reason: str) -> None:
        """End the epoch under way at its next optimiser step, and training after it (a deadline's
        last guard). The cut epoch is validated, recorded (its record's "cut_after_batches" says
        where it ended), compared with the best and checkpointed like any other; a resumed run
        finds training stopped. One process only: hooks run on rank 0 alone."""
        self._one_process("cutting an epoch")
        self._cut = True
        self.stop(reason)

    def shorten(self, epochs: int, reason: str) -> None:
        """Train `epochs` epochs in all instead of cfg.epochs (never fewer than the one under way,
        never more than planned). The learning-rate schedule, Lookahead and progressive resizing
        follow the new total from the next step on, so a shortened run still ends its schedule.
        state.shortened records it, and a resumed run with the same planned epochs shortens alike.
        One process only: hooks run on rank 0 alone."""
        epochs = max(int(epochs), self.state.epoch + 1)
        if epochs >= self.cfg.epochs:
            return
        self._one_process("shortening a run")
        planned = self.state.shortened.get("from", self.cfg.epochs)
        self.state.shortened = {"from": planned, "to": epochs, "at_step": self.state.step, "reason": reason}
        self._set_epochs(epochs)

    def _set_epochs(self, epochs: int) -> None:
        self.cfg = dataclasses.replace(self.cfg, epochs=epochs)     # the caller's config is left as it was
        self.total_steps = self.steps_per_epoch * epochs

    def _one_process(self, what: str) -> None:
        if self.world > 1:
            raise ImgclsError(f"{what} needs every process to agree; it runs in one process")

    def _emit(self, event: str, *args) -> None:
        if self.rank == 0:
            for hook in self.hooks:
                getattr(hook, event)(self, *args)

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint_path(self, which: str) -> Path:
        return RunFolder(self.run_dir).checkpoint(which)

    def _save_progress(self) -> None:
        """A mid-epoch checkpoint: `last`, with the epoch's position (resume continues from there).
        Every rank calls it (the totals are combined across ranks); rank 0 writes."""
        self._synced_totals()
        if self.rank == 0 and self.run_dir:
            self._save("last")

    def _save(self, which: str) -> None:
        opt_tensors, groups = ckpt.flatten_optimizer(self.optimizer.state_dict())
        tensors = {**ckpt.prefixed("net", self.net.state_dict()), **opt_tensors}
        if self.ema is not None:
            tensors |= ckpt.prefixed("ema", self.ema.state_dict())
        if self.lookahead is not None:
            tensors |= ckpt.prefixed("lookahead", self.lookahead.slow)
        meta = {"state": asdict(self.state), "param_groups": groups, "config": asdict(self.cfg),
                "task": self.task.kind, "execution": asdict(self.execution)}
        ckpt.save_checkpoint(self.checkpoint_path(which), tensors, meta)

    def _checkpointed_execution(self) -> Execution | None:
        """The execution the checkpoint to resume was trained with (None: no checkpoint, or one
        from before executions were recorded; then it is measured again)."""
        path = self.checkpoint_path("last") if self.run_dir else None
        if path is None or not path.is_file():
            return None
        recorded = ckpt.load_checkpoint(path)[1].get("execution")
        return Execution(**recorded) if recorded else None

    def _restore(self) -> None:
        path = self.checkpoint_path("last") if self.run_dir else None
        if path is None or not path.is_file():
            return          # nothing to resume: start from scratch
        tensors, meta = ckpt.load_checkpoint(path)
        if meta.get("task", SingleLabel.kind) != self.task.kind:
            raise ImgclsError(f"{self.run_dir}: the checkpoint was trained on {meta.get('task', SingleLabel.kind)} "
                              f"data, this data is {self.task.kind}; use a new --out")
        before = {**meta["config"], "monitor": monitored(meta["config"].get("monitor", "auto"), self.task)}
        now = {**asdict(self.cfg), "monitor": self.monitor}   # a checkpoint from before "auto" resumes too
        changed = {k for k, v in before.items() if now.get(k, v) != v and k not in ("epochs", "device", "checkpoint_every", "compile", "threads")}
        if changed:
            raise ImgclsError(f"{self.run_dir}: the checkpoint was trained with other settings "
                              f"({', '.join(sorted(changed))}); use a new --out or the same settings")
        self.net.load_state_dict(ckpt.unprefixed("net", tensors))
        self.optimizer.load_state_dict(ckpt.unflatten_optimizer(tensors, meta["param_groups"]))
        if self.ema is not None:
            self.ema.load_state_dict(ckpt.unprefixed("ema", tensors))
        if self.lookahead is not None:
            for name, value in ckpt.unprefixed("lookahead", tensors).items():
                self.lookahead.slow[name].copy_(value)
        self.state = TrainState(**meta["state"])
        if self.state.shortened.get("from") == self.cfg.epochs:       # the run was shortened: so is its replay
            self._set_epochs(self.state.shortened["to"])

    def _load_best(self) -> None:
        """End with the best epoch's weights (the EMA's when on): the saved model is the best one."""
        if self.state.best_epoch != self.state.epoch:
            if self.run_dir and self.checkpoint_path("best").is_file():
                tensors, _ = ckpt.load_checkpoint(self.checkpoint_path("best"))
                self.net.load_state_dict(ckpt.unprefixed("net", tensors))
                if self.ema is not None:
                    self.ema.load_state_dict(ckpt.unprefixed("ema", tensors))
            elif self._best_weights is not None:
                self.eval_net.load_state_dict(self._best_weights)
        if self.ema is not None:
            self.net.load_state_dict(self.ema.module.state_dict())


class WorkerDied(ImgclsError):
    """A DataLoader worker decoding the training images exited (killed, out of memory, crashed).
    while_waiting: the trainer learnt of it while waiting for a batch (right after an optimiser step)."""

    def __init__(self, message: str, while_waiting: bool = False):
        super().__init__(message)
        self.while_waiting = while_waiting

    @classmethod
    def from_loader(cls, exc: Exception, while_waiting: bool = False, what: str = "training") -> WorkerDied:
        return cls(f"a worker decoding the {what} images died (" + str(exc).split(".")[0].strip()
                   + "; killed for memory? try fewer workers or a smaller --batch-size)", while_waiting)


def _watched(batches):
    """The batches of a DataLoader; a worker's death noticed while waiting for one is WorkerDied."""
    try:
        yield from batches
    except RuntimeError as exc:
        if "DataLoader worker" not in str(exc):
            raise
        raise WorkerDied.from_loader(exc, while_waiting=True) from None


class EpochTotals:
    """An epoch's summed loss, correct count and samples seen: `base` (all ranks', as of the
    checkpoint the epoch resumed from) plus what this rank added since."""

    def __init__(self, base: list):
        self.base, self.mine = [float(base[0]), int(base[1]), int(base[2])], [0.0, 0, 0]

    def add(self, loss_sum: float, correct: int, seen: int) -> None:
        self.mine = [self.mine[0] + loss_sum, self.mine[1] + correct, self.mine[2] + seen]

    def synced(self, world: int, device: torch.device) -> list:
        """base plus every rank's additions (a collective: all ranks call it together); the result
        becomes the new base."""
        mine = self.mine
        if world > 1:
            summed = torch.tensor(mine, dtype=torch.float64, device=device)
            dist.all_reduce(summed)
            mine = summed.tolist()
        self.base = [self.base[0] + mine[0], self.base[1] + int(mine[1]), self.base[2] + int(mine[2])]
        self.mine = [0.0, 0, 0]
        return list(self.base)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from (seed, epoch, batch, ...): distinct tuples give unrelated seeds."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded from parts (see derived_seed)."""
    return torch.Generator().manual_seed(derived_seed(*parts))


def build_optimizer(net: nn.Module, cfg: TrainingConfig, lr_scales: dict[str, float] | None = None
                    ) -> torch.optim.Optimizer:
    """Weight decay on weight matrices and kernels only, unless decay_norms: decaying norm scales
    and biases only fights the normalisation. A parameter named in lr_scales (a fine-tuned body,
    say) learns at that fraction of the scheduled rate; normalisation layers' biases at
    norm_bias_lr times it (airbench's higher rate for batch-norm biases). Each (rate, decays) pair
    is one parameter group, whose "lr_scale" the loop multiplies the rate by."""
    lr_scales = lr_scales or {}
    norm_biases = {id(m.bias) for m in net.modules()
                   if isinstance(m, NORMALISATIONS) and isinstance(getattr(m, "bias", None), nn.Parameter)}
    by_group: dict[tuple[float, bool], list] = {}
    for name, p in net.named_parameters():
        if p.requires_grad:
            scale = lr_scales.get(name, 1.0) * (cfg.norm_bias_lr if id(p) in norm_biases else 1.0)
            key = (scale, p.ndim > 1 or cfg.decay_norms)
            by_group.setdefault(key, []).append(p)
    by_group.setdefault((1.0, True), [])
    by_group.setdefault((1.0, False), [])
    groups = [{"params": params, "weight_decay": cfg.weight_decay if decays else 0.0, "lr_scale": scale}
              for (scale, decays), params in sorted(by_group.items(), key=lambda kv: (-kv[0][0], not kv[0][1]))]
    # One fused kernel per step instead of several per parameter: on a 2-core CPU the course CNN's
    # SGD step takes 0.3 ms fused against 16-100 ms parameter by parameter when other work shares the cores.
    fused = {"fused": True} if all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"]) else {}
    if cfg.opt == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               **fused)
    if cfg.opt == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, **fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, **fused)
