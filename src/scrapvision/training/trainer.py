"""Fine-tune a backbone on labelled images; everything a run produces goes into its folder.

Recipe (each step switchable in the config): optional linear probe on frozen features to
give the new head a sensible start, then fine-tuning with AdamW (lower LR for the backbone
than for the head), warmup + cosine schedule, label smoothing, optional mixup/CutMix,
optional frozen early stages and EMA of weights; early stopping on val accuracy. A run folder holds:

    config.yaml  split.csv  run.json  metrics.csv  metrics.json  curves.png  best.pt  last.pt

`last.pt` is written after every epoch, so a run interrupted at any point resumes from it.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from scrapvision.datasets import Sample, class_names, fingerprint, load_samples, write_split
from scrapvision.registry import write_json_atomic
from scrapvision.training.backbones import create_model, forward_rest, forward_trunk
from scrapvision.training.config import TrainConfig, dump_config, load_config
from scrapvision.training.data import (
    CachedImages, build_augmentation, decode_all, label_tensor, normalise,
)

CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.csv"
RUN_FILE = "run.json"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
EVAL_BATCH = 64


class TrainingError(RuntimeError):
    """The run cannot start or continue; the message says why."""


@dataclass
class Score:
    """Validation result; higher accuracy wins, lower loss breaks ties."""

    accuracy: float
    loss: float

    def beats(self, other: Score | None) -> bool:
        return other is None or (self.accuracy, -self.loss) > (other.accuracy, -other.loss)


def new_run_dir(config: TrainConfig) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return config.runs_dir / f"{config.name}-{stamp}"


def load_run_config(run_dir: Path, overrides: list[str] = ()) -> TrainConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise TrainingError(f"{run_dir} is not a training run (no {CONFIG_FILE})")
    return load_config(path, list(overrides))


def run_samples(config: TrainConfig, run_dir: Path) -> list[Sample]:
    """The run's samples: its own split.csv once written, so a resumed run sees the same split."""
    own_split = run_dir / SPLIT_FILE
    split_csv = own_split if own_split.is_file() else config.data.split_csv
    return load_samples(config.data.roots, split_csv, seed=config.seed,
                        fractions=config.data.fractions)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(config: TrainConfig, run_dir: Path | None = None, *, progress: bool = True) -> Path:
    """Train per `config` into `run_dir` (new folder when None; resumes when it has last.pt)."""
    run_dir = Path(run_dir) if run_dir is not None else new_run_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    seed_everything(config.seed)

    samples = run_samples(config, run_dir)
    classes = class_names(samples)
    by_split = {name: [s for s in samples if s.split == name] for name in ("train", "val")}
    for name, rows in by_split.items():
        if not rows:
            raise TrainingError(f"the data has no '{name}' rows; cannot train")
    dump_config(config, run_dir / CONFIG_FILE)
    write_split(samples, run_dir / SPLIT_FILE)
    run_file = run_dir / RUN_FILE
    previous = json.loads(run_file.read_text()) if run_file.is_file() else {}
    write_json_atomic(run_file, {
        **previous,  # a resumed run keeps its best epoch
        "name": config.name, "classes": classes, "input_size": config.input_size,
        "backbone": config.model.backbone, "data_fingerprint": fingerprint(samples),
        "counts": {split: sum(s.split == split for s in samples)
                   for split in ("train", "val", "test")},
    })

    size = config.input_size
    train_set = CachedImages(decode_all(by_split["train"], size, progress=progress),
                             label_tensor(by_split["train"], classes),
                             build_augmentation(config.augment, size))
    val_images = decode_all(by_split["val"], size, progress=progress)
    val_labels = label_tensor(by_split["val"], classes)

    model = create_model(config.model.backbone, len(classes), pretrained=config.model.pretrained,
                         drop_rate=config.model.drop_rate,
                         drop_path_rate=config.model.drop_path_rate)
    model = model.to(memory_format=torch.channels_last)
    frozen = freeze_early_stages(model, config.optim.freeze_stages)
    Trainer(config, run_dir, model, frozen, train_set, val_images, val_labels, progress).fit()
    return run_dir


def freeze_early_stages(model: nn.Module, stages: int) -> list[nn.Module]:
    """Freeze the stem and the first `stages` block stages; returns the frozen modules.

    Early stages hold generic edge/texture filters and dominate the backward cost at full
    resolution, so freezing them is cheap regularisation and a large speed-up on CPU.
    """
    if stages == 0:
        return []
    if stages > len(model.blocks):
        raise TrainingError(f"freeze_stages={stages} but the backbone has {len(model.blocks)}")
    frozen = [model.conv_stem, model.bn1, *model.blocks[:stages]]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


class Trainer:
    def __init__(self, config: TrainConfig, run_dir: Path, model: nn.Module,
                 frozen: list[nn.Module], train_set: CachedImages, val_images: torch.Tensor,
                 val_labels: torch.Tensor, progress: bool) -> None:
        self.config, self.opt = config, config.optim
        self.run_dir, self.model, self.frozen = run_dir, model, frozen
        self.stages = self.opt.freeze_stages
        self.train_set, self.val_labels, self.progress = train_set, val_labels, progress
        # The frozen trunk never changes: its output is computed once, not every epoch.
        self.val_images = val_images
        self.val_inputs = self._trunk(val_images, "val trunk")
        self.train_views = self._cache_views() if self.opt.cached_views else None
        self.steps_per_epoch = math.ceil(len(train_set) / self.opt.batch_size)
        if self.opt.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, self.opt.max_steps_per_epoch)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.opt.label_smoothing)
        self.mixup = self._new_mixup()
        self.train_criterion = SoftTargetCrossEntropy() if self.mixup else self.criterion
        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=self.opt.lr)
        warmup = round(self.opt.warmup_epochs * self.steps_per_epoch)
        self.scheduler = CosineLRScheduler(
            self.optimizer, t_initial=max(1, self.opt.epochs * self.steps_per_epoch - warmup),
            lr_min=self.opt.lr * 1e-3, warmup_t=warmup,
            warmup_lr_init=self.opt.lr * 1e-3, warmup_prefix=True, t_in_epochs=False)
        self.ema: ModelEmaV3 | None = None
        self.epoch, self.step, self.bad_epochs = 0, 0, 0
        self.best: Score | None = None
        self.history: list[dict[str, Any]] = []

    def _new_mixup(self) -> Mixup | None:
        """Mixup/CutMix on training batches (soft targets with the same label smoothing)."""
        augment = self.config.augment
        if not (augment.mixup or augment.cutmix):
            return None
        return Mixup(mixup_alpha=augment.mixup, cutmix_alpha=augment.cutmix,
                     label_smoothing=self.opt.label_smoothing,
                     num_classes=self.model.num_classes)

    def _mix(self, inputs: torch.Tensor, labels: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) for `train_criterion`: soft mixed targets when mixup is on.

        timm's Mixup pairs each row with its mirror in the batch, so an odd-sized (last)
        batch is left unmixed, with the same smoothed targets.
        """
        if self.mixup is None:
            return inputs, labels
        if len(labels) % 2:
            return inputs, mixup_target(labels, self.model.num_classes, 1.0,
                                        self.opt.label_smoothing)
        return self.mixup(inputs, labels)

    def _new_ema(self) -> ModelEmaV3 | None:
        if not self.opt.ema_decay:
            return None
        return ModelEmaV3(self.model, decay=self.opt.ema_decay, use_warmup=True)

    def _param_groups(self) -> list[dict[str, Any]]:
        """Decay/no-decay groups, the backbone's at `backbone_lr_scale` of the head's LR."""
        head = self.model.get_classifier()
        head_ids = {id(p) for p in head.parameters()}
        backbone = nn.ParameterList(p for p in self.model.parameters()
                                    if p.requires_grad and id(p) not in head_ids)
        groups = []
        for module, scale in ((backbone, self.opt.backbone_lr_scale), (head, 1.0)):
            for group in param_groups_weight_decay(module, self.opt.weight_decay):
                groups.append({**group, "lr": self.opt.lr * scale})
        return groups

    def fit(self) -> None:
        last = self.run_dir / LAST_CHECKPOINT
        if last.is_file():
            self._load(last)
        else:
            if self.opt.probe_epochs:
                self._fit_probe()
            self.ema = self._new_ema()  # averages from the probed head, not a random one
        while self.epoch < self.opt.epochs and self.bad_epochs < self.opt.patience:
            started = time.perf_counter()
            train_loss, train_acc = self._train_epoch()
            scores = {"model": self._validate(self.model)}
            if self.ema is not None:
                scores["ema"] = self._validate(self.ema.module)
            source, score = max(scores.items(), key=lambda kv: (kv[1].accuracy, -kv[1].loss))
            row = {"epoch": self.epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                   "val_loss": scores["model"].loss, "val_acc": scores["model"].accuracy,
                   "ema_val_loss": scores["ema"].loss if self.ema else None,
                   "ema_val_acc": scores["ema"].accuracy if self.ema else None,
                   "lr": self.optimizer.param_groups[-1]["lr"],
                   "seconds": round(time.perf_counter() - started, 1)}
            self.history.append(row)
            if score.beats(self.best):
                self.best, self.bad_epochs = score, 0
                self._save_best(source, score, self.epoch + 1)
            else:
                self.bad_epochs += 1
            self.epoch += 1
            self._save_last()
            self._write_metrics()
            tqdm.write(f"epoch {self.epoch}/{self.opt.epochs} train loss {train_loss:.3f} "
                       f"acc {train_acc:.3f} | val acc {scores['model'].accuracy:.4f}"
                       + (f" ema {scores['ema'].accuracy:.4f}" if self.ema else "")
                       + f" | best {self.best.accuracy:.4f} | {row['seconds']}s")
        if self.bad_epochs >= self.opt.patience:
            tqdm.write(f"early stop: no val improvement in {self.opt.patience} epochs")
        self._measure_flip_tta()

    @torch.no_grad()
    def _measure_flip_tta(self) -> None:
        """Val accuracy of the best weights with logits averaged over the horizontal mirror.

        Recorded in run.json so `model.tta_flip` (baked into the export) is chosen on val.
        """
        best = copy.deepcopy(self.model)
        best.load_state_dict(torch.load(self.run_dir / BEST_CHECKPOINT, weights_only=True)["model"])
        best.eval()
        plain = torch.cat([forward_rest(best, self._as_input(batch), self.stages)
                           for batch in self.val_inputs.split(EVAL_BATCH)])
        mirrored = torch.cat([best(self._prepare(batch.flip(3)))
                              for batch in self.val_images.split(EVAL_BATCH)])
        run = json.loads((self.run_dir / RUN_FILE).read_text())
        for key, logits in (("val_acc", plain), ("val_acc_flip_tta", plain + mirrored)):
            run["best"][key] = (logits.argmax(1) == self.val_labels).float().mean().item()
        write_json_atomic(self.run_dir / RUN_FILE, run)
        tqdm.write(f"best epoch {run['best']['epoch']}: val acc {run['best']['val_acc']:.4f}, "
                   f"with flip TTA {run['best']['val_acc_flip_tta']:.4f}")

    @torch.no_grad()
    def _trunk(self, images: torch.Tensor, description: str = "trunk") -> torch.Tensor:
        """Frozen-trunk output for uint8 images, in batches, stored as float16."""
        self.model.eval()
        chunks = [forward_trunk(self.model, self._prepare(batch), self.stages).half()
                  for batch in tqdm(images.split(EVAL_BATCH), desc=description,
                                    disable=not self.progress, leave=False)]
        return torch.cat(chunks)

    def _cache_views(self) -> torch.Tensor:
        """(views, N, ...) trunk outputs: view 0 unaugmented, the others augmented.

        Each epoch then picks one view per image and runs only the trainable rest of the
        network: with the expensive full-resolution stages frozen, an epoch costs a fraction
        of a full pass, at the price of a fixed set of augmentations.
        """
        if self.stages == 0:
            raise TrainingError("cached_views needs freeze_stages > 0 (a frozen trunk to cache)")
        torch.manual_seed(self.config.seed)
        augment = self.train_set.transform
        views = [self._trunk(self.train_set.images, "trunk view 1")]
        for view in range(1, self.opt.cached_views):
            augmented = torch.stack([augment(image) for image in self.train_set.images])
            views.append(self._trunk(augmented, f"trunk view {view + 1}"))
        return torch.stack(views)

    def _fit_probe(self) -> None:
        """Train only the new head on frozen, unaugmented features (a linear probe)."""
        clean = (self.train_views[0] if self.train_views is not None
                 else self._trunk(self.train_set.images))
        train_features = self._features(clean)
        labels = self.train_set.labels
        head = self.model.get_classifier()
        optimizer = torch.optim.AdamW(head.parameters(), lr=self.opt.probe_lr,
                                      weight_decay=self.opt.weight_decay)
        generator = torch.Generator().manual_seed(self.config.seed)
        for _ in tqdm(range(self.opt.probe_epochs), desc="probe", disable=not self.progress):
            for batch in torch.randperm(len(labels), generator=generator).split(
                    self.opt.batch_size):
                loss = self.criterion(head(train_features[batch]), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        score = self._validate(self.model)
        tqdm.write(f"probe: val acc {score.accuracy:.4f} loss {score.loss:.3f}")
        # Fine-tuning must beat the probe on val to replace it: on small photo sets it may not.
        self.best = score
        self._save_best("probe", score, epoch=0)

    @torch.no_grad()
    def _features(self, trunk_out: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        return torch.cat([forward_rest(self.model, self._as_input(batch), self.stages,
                                       pre_logits=True)
                          for batch in trunk_out.split(EVAL_BATCH)])

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(trunk output, labels) per step: from the cached views, or augmented on the fly."""
        torch.manual_seed(self.config.seed * 10_000 + self.epoch)  # resumable augmentation
        generator = torch.Generator().manual_seed(self.config.seed + self.epoch)
        labels = self.train_set.labels
        if self.train_views is not None:
            order = torch.randperm(len(labels), generator=generator)
            views = torch.randint(len(self.train_views), (len(labels),), generator=generator)
            for batch in order.split(self.opt.batch_size):
                yield self._as_input(self.train_views[views[batch], batch]), labels[batch]
            return
        loader = DataLoader(self.train_set, batch_size=self.opt.batch_size, shuffle=True,
                            drop_last=len(self.train_set) > self.opt.batch_size,
                            generator=generator)
        for images, batch_labels in loader:
            with torch.no_grad():
                trunk_out = forward_trunk(self.model, self._prepare(images), self.stages)
            yield trunk_out, batch_labels

    def _train_epoch(self) -> tuple[float, float]:
        self.model.train()
        for module in self.frozen:  # frozen BatchNorm keeps its ImageNet statistics
            module.eval()
        if self.opt.freeze_bn:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(self._batches(), total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}",
                   disable=not self.progress, leave=False)
        for index, (inputs, labels) in enumerate(bar):
            if index >= self.steps_per_epoch:
                break
            inputs, targets = self._mix(inputs, labels)
            logits = forward_rest(self.model, inputs, self.stages)
            loss = self.train_criterion(logits, targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            self.scheduler.step_update(self.step)
            if self.ema is not None:
                self.ema.update(self.model, self.step)
            total_loss += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        return total_loss / seen, correct / seen

    @torch.no_grad()
    def _validate(self, model: nn.Module) -> Score:
        model.eval()
        logits = torch.cat([forward_rest(model, self._as_input(batch), self.stages)
                            for batch in self.val_inputs.split(EVAL_BATCH)])
        loss = nn.functional.cross_entropy(logits, self.val_labels).item()
        accuracy = (logits.argmax(1) == self.val_labels).float().mean().item()
        return Score(accuracy=accuracy, loss=loss)

    @staticmethod
    def _prepare(images: torch.Tensor) -> torch.Tensor:
        return normalise(images).contiguous(memory_format=torch.channels_last)

    @staticmethod
    def _as_input(trunk_out: torch.Tensor) -> torch.Tensor:
        return trunk_out.float().contiguous(memory_format=torch.channels_last)

    def _save_best(self, source: str, score: Score, epoch: int) -> None:
        """`source`: "model", "ema" or "probe" (epoch 0: the probed head on the ImageNet trunk)."""
        weights = (self.ema.module if source == "ema" else self.model).state_dict()
        torch.save({"model": weights, "epoch": epoch, "source": source,
                    "val_acc": score.accuracy, "val_loss": score.loss},
                   self.run_dir / BEST_CHECKPOINT)
        run = json.loads((self.run_dir / RUN_FILE).read_text())
        run["best"] = {"epoch": epoch, "weights": source,
                       "val_acc": score.accuracy, "val_loss": score.loss}
        write_json_atomic(self.run_dir / RUN_FILE, run)

    def _save_last(self) -> None:
        state = {
            "epoch": self.epoch, "step": self.step, "bad_epochs": self.bad_epochs,
            "best": None if self.best is None else vars(self.best), "history": self.history,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }
        tmp = self.run_dir / f"{LAST_CHECKPOINT}.tmp"
        torch.save(state, tmp)
        tmp.replace(self.run_dir / LAST_CHECKPOINT)

    def _load(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.ema = self._new_ema()
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.step, self.bad_epochs = state["epoch"], state["step"], state["bad_epochs"]
        self.best = Score(**state["best"]) if state["best"] else None
        self.history = state["history"]
        tqdm.write(f"resumed {self.run_dir} after epoch {self.epoch}")

    def _write_metrics(self) -> None:
        write_json_atomic(self.run_dir / "metrics.json", self.history)
        with (self.run_dir / "metrics.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(self.history[0]))
            writer.writeheader()
            writer.writerows(self.history)
        plot_curves(self.history, self.run_dir / "curves.png")


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy per epoch, train vs val (and EMA when used)."""
    import matplotlib  # noqa: PLC0415 (only needed here)

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415

    epochs = [row["epoch"] for row in history]
    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train", "train"), ("val", "val"), ("ema_val", "val (EMA)")):
        if history[0].get(f"{key}_loss") is not None:
            loss_ax.plot(epochs, [row[f"{key}_loss"] for row in history], label=label)
            acc_ax.plot(epochs, [row[f"{key}_acc"] for row in history], label=label)
    for axis, title in ((loss_ax, "loss"), (acc_ax, "top-1 accuracy")):
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
