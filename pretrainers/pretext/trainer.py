"""The one training loop every pretext method runs in (``train_pretext``), and its data.

Reproducible and resumable by construction, like ``tasks.linear.heads``:

- the order of epoch ``e`` is a permutation seeded from (seed, e); example ``i`` of epoch ``e``
  is made by ``method.sample(image, i, generator)`` with a generator seeded from (seed, e, i), so
  neither the number of DataLoader workers nor an interruption changes a batch;
- the method's own initialisation (heads, queues) is seeded from the run seed, the trunk's from
  ``create_model(arch, seed)``;
- a checkpoint (atomic write) at the end of every epoch and every ``checkpoint_every`` iterations
  holds the whole method state (trunk, heads, momentum encoders, queues and banks: everything in
  its ``state_dict``), the optimiser, the LR scheduler, torch's and numpy's RNG states, the
  iteration, the epoch's running sums and the byte length of the CSV log. A run killed at any
  point and started again with the same arguments ends with the weights of an uninterrupted run.

The final checkpoint is ``{"state_dict": trunk weights in torchvision layout, "meta": {...}}``
(the ``checkpoint`` pretrainer and ``benchmark.checkpoint.load_trunk_weights`` read it strictly),
with the same ``meta`` as JSON next to it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from benchmark import __version__
from benchmark.config import config_hash, safe_load_text
from benchmark.datasets.images import IMAGENET_MEAN, IMAGENET_STD, ImageFileDataset, open_rgb
from benchmark.devices import check_device
from benchmark.errors import ConfigError, DatasetError
from benchmark.models import create_model
from benchmark.models.backbone import get_architecture, trunk_state_dict
from benchmark.options import validate
from benchmark.provenance import resolve_device
from benchmark.sweeps import nested_subset
from pretrainers.common import subset_meta
from benchmark.training import (CsvLog, Part, ResumableBatches, Schedule, TrainingLoop, atomic_torch_save, atomic_write,
                                derived_seed, epoch_order)
from benchmark.training import build_optimizer as training_optimizer

from .lars import LARS
from .method import PRETEXT_METHODS, PretextMethod
from .options import (LOOP_OPTIONS, OPTIMIZERS, PRETEXT_OPTIONS, SUITE_DATASETS,  # noqa: F401  (their old home)
                      TRAIN_DEFAULTS)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp")
CHECKPOINT_FORMAT = 1
_EXAMPLE_TAG, _INIT_TAG, _RUN_TAG = 0x5A31, 0x1A17, 0x7E57  # keep the derived seeds apart


# --- data --------------------------------------------------------------------------------------


def list_images(image_dir: Path) -> list[Path]:
    """Image files under ``image_dir`` (recursive, common extensions, any case), sorted by their
    relative path so the list, and so the run, is the same on every file system."""
    files = [p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(image_dir).as_posix())


def resolve_images(data: str | Path, data_root: Path | None = None) -> tuple[list[Path], Path, str]:
    """(image paths, their root, description) for an IMAGE_DIR or a suite dataset ``NAME:SPLIT``
    (``voc07:trainval``, ``places205:train``; under ``data_root``). A relative IMAGE_DIR that does
    not exist as given is looked up under ``data_root``."""
    text = str(data)
    name, _, split = text.partition(":")
    if split and name in SUITE_DATASETS:
        root = Path(data_root or "data")
        if name == "voc07":
            from benchmark.datasets.voc import load_voc

            voc = load_voc(root, split)
            return list(voc.image_paths), voc.root, f"voc07:{split} ({voc.root})"
        from benchmark.datasets.places import load_places205

        places = load_places205(root / "Places205", split)
        return list(places.image_paths), places.root, f"places205:{split} ({places.root})"
    image_dir = Path(text).expanduser()
    if not image_dir.is_dir() and not image_dir.is_absolute() and data_root is not None:
        image_dir = Path(data_root) / image_dir
    if not image_dir.is_dir():
        raise DatasetError(f"image directory {image_dir} does not exist; pass a folder of images "
                           f"(searched recursively) or a suite dataset such as 'voc07:trainval'")
    paths = list_images(image_dir)
    if not paths:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {image_dir}")
    return paths, image_dir, str(image_dir)


def select_subset(paths: list[Path], root: Path, fraction: float, seed: int) -> list[Path]:
    """The nested subset (benchmark.sweeps.nested_subset) of ``paths``, keyed by their path
    relative to ``root``: the same images wherever the dataset lives."""
    keep = nested_subset([p.relative_to(root).as_posix() for p in paths], fraction, seed)
    return [paths[i] for i in keep]


def data_fingerprint(paths: list[Path], root: Path) -> str:
    """sha256 of the sorted relative paths and file sizes: which images a model was trained on."""
    digest = hashlib.sha256()
    for rel, size in sorted((p.relative_to(root).as_posix(), p.stat().st_size) for p in paths):
        digest.update(f"{rel}\t{size}\n".encode())
    return digest.hexdigest()


def example_generator(seed: int, epoch: int, index: int, *repeat: int) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(seed, _EXAMPLE_TAG, epoch, index, *repeat))


class PretextDataset(Dataset):
    """Item ``(index, epoch)``: ``method.sample`` of image ``index`` with its own generator."""

    def __init__(self, paths: list[Path], method: PretextMethod, seed: int):
        self.paths, self.method, self.seed = paths, method, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        index, epoch, *repeat = key  # (index, epoch, r): the r-th repeat of the image in the epoch
        image = open_rgb(self.paths[index])  # DatasetError naming the file when it is corrupt
        return self.method.sample(image, index, example_generator(self.seed, epoch, index, *repeat))


class EpochBatches(ResumableBatches):
    """Batches ``[position, iterations_per_epoch)`` of epoch ``epoch`` (the toolkit's resumable
    sampler limited to one epoch, as the loop makes a loader per epoch): ``(index, epoch)`` keys in
    the epoch's seeded order, or the method's ``order``; the last incomplete batch is dropped
    (contrastive losses and BatchNorm want full batches)."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, position: int = 0,
                 order: torch.Tensor | None = None):
        order = epoch_order(seed, epoch, n) if order is None else order
        if len(order) != n:
            raise ValueError(f"an epoch order must have {n} entries, got {len(order)}")
        per_epoch = n // batch_size
        # an image drawn again in the same epoch (a method's sampler) gets its own augmentation
        seen: dict[int, int] = {}
        keys = []
        for i in order.tolist():
            keys.append((i, epoch) if i not in seen else (i, epoch, seen[i]))
            seen[i] = seen.get(i, 0) + 1
        first = epoch * per_epoch

        def batch_keys(iteration: int, _epoch: int, _indices: list[int]) -> list:
            b = iteration - first
            return keys[b * batch_size:(b + 1) * batch_size]

        super().__init__(n, batch_size, first + per_epoch, first + position, seed, iterations_per_epoch=per_epoch,
                         known_orders={epoch: order}, keys=batch_keys)


def plain_transform(size: int) -> T.Compose:
    """Resize (shorter side) + centre crop to ``size``, ImageNet normalisation: ``epoch_start``'s
    view of the data."""
    return T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


# --- options -----------------------------------------------------------------------------------


def parse_opts(pairs: list[str] | None) -> dict:
    """``["temperature=0.2", "blur=false"]`` -> {"temperature": 0.2, "blur": False} (YAML values)."""
    out: dict = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--opt {pair!r}: expected key=value, e.g. --opt temperature=0.2")
        key = key.strip()
        if key in out:
            raise ConfigError(f"--opt {key} is given twice")
        out[key] = safe_load_text(value, f"--opt {pair!r}")
    return out


def resolve_training(method_cls, **given) -> dict:
    """lr / momentum / weight_decay / warmup_epochs: the user's value, else the method's paper
    value (``method_cls.training``), else the loop default."""
    validate(given, {key: LOOP_OPTIONS.spec[key] for key in given}, "training")
    out = {}
    for key, default in TRAIN_DEFAULTS.items():
        value = given.get(key)
        out[key] = float(value if value is not None else method_cls.training.get(key, default))
    optimizer = given.get("optimizer") or method_cls.training.get("optimizer", "sgd")
    if optimizer != "sgd":  # keeps the run ids (and checkpoints) of SGD runs as they were
        out["optimizer"] = optimizer
    return out


def build_optimizer(parameter_groups, training: dict, schedule: Schedule | None = None) -> torch.optim.Optimizer:
    """SGD with momentum (the default), or LARS (SimCLR's large-batch optimiser)."""
    schedule = schedule or cosine_schedule(training["lr"], 1, 0, 1, training["momentum"], training["weight_decay"])
    lars = training.get("optimizer", "sgd") == "lars"
    return training_optimizer(parameter_groups, schedule, optimizer=LARS if lars else torch.optim.SGD)


def cosine_schedule(lr: float, total: int, warmup: int, batch_size: int, momentum: float = 0.9,
                    weight_decay: float = 0.0) -> Schedule:
    """Linear warm-up over ``warmup`` iterations (LR ``lr * (it + 1) / warmup``), then half a cosine
    from ``lr`` to 0 over the rest (SimCLR's and MoCo v2's schedule), stepped once per iteration."""
    return Schedule("cosine", total, lr, batch_size, decay="cosine", warmup_iterations=warmup, warmup="ramp",
                    momentum=momentum, weight_decay=weight_decay)


# --- the loop ----------------------------------------------------------------------------------


def build_method(name: str, arch_name: str, image_size: int, seed: int, options: dict) -> PretextMethod:
    """The method around a fresh trunk; its heads, queues, etc. are initialised from the seed."""
    cls = PRETEXT_METHODS.get(name)
    trunk = create_model(arch_name, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed, _INIT_TAG))
        return cls(trunk, get_architecture(arch_name), image_size, **options)


def train_pretext(method: str, data: str | Path, out: str | Path, *, arch: str = "resnet50", epochs: int = 30,
                  batch_size: int = 64, lr: float | None = None, image_size: int = 224, seed: int = 0,
                  device: str | torch.device = "auto", method_options: dict | None = None,
                  momentum: float | None = None, weight_decay: float | None = None,
                  warmup_epochs: float | None = None, optimizer: str | None = None, num_workers: int = 2,
                  checkpoint_every: int = 500, data_fraction: float = 1.0, data_seed: int = 0,
                  data_root: Path | None = None, where: str = "ssl-bench pretrain") -> dict:
    """Train ``method`` on the images of ``data``; writes ``out`` (+ ``.json``, ``.log.csv``) and
    returns the checkpoint's ``meta``. Resumes from ``out``'s ``.partial.pth`` when one made with the
    same configuration and data exists."""
    validate({"method": method, "arch": arch, "data": str(data), "epochs": epochs, "batch_size": batch_size, "lr": lr,
              "optimizer": optimizer, "image_size": image_size, "seed": seed, "method_options": method_options,
              "momentum": momentum, "weight_decay": weight_decay, "warmup_epochs": warmup_epochs,
              "num_workers": num_workers, "checkpoint_every": checkpoint_every, "data_fraction": data_fraction,
              "data_seed": data_seed}, LOOP_OPTIONS, where)
    cls = PRETEXT_METHODS.get(method)
    # a plain dict: it is saved in the checkpoint's meta, which torch.load(weights_only=True) reads
    options = dict(validate(method_options, cls.options, f"{where}.method_options"))
    if not isinstance(device, torch.device):  # a suite model gets the run's device, checked at start-up
        check_device(device, f"{where} --device")
    training = resolve_training(cls, lr=lr, momentum=momentum, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
                                optimizer=optimizer)
    out = Path(out).expanduser()
    paths, root, described = resolve_images(data, data_root)
    total_images = len(paths)
    if data_fraction < 1:
        paths = select_subset(paths, root, data_fraction, data_seed)
        described += f", nested subset {data_fraction:g} (data_seed {data_seed})"
    fingerprint = data_fingerprint(paths, root)
    if batch_size > len(paths):
        raise ConfigError(f"batch_size {batch_size} is larger than the {len(paths)} images in {described}")
    device = resolve_device(device) if isinstance(device, str) else device
    per_epoch = len(paths) // batch_size
    total = epochs * per_epoch
    run_config = {"method": method, "options": options, "arch": arch, "image_size": image_size, "seed": seed,
                  "epochs": epochs, "batch_size": batch_size, "training": training, "data_fingerprint": fingerprint}
    run_id = config_hash(run_config)

    model = build_method(method, arch, image_size, seed, options).to(device)
    warmup = round(training["warmup_epochs"] * per_epoch)
    schedule = cosine_schedule(training["lr"], total, warmup, batch_size, training["momentum"],
                               training["weight_decay"])
    optimizer = build_optimizer(model.parameter_groups(), training, schedule)
    scheduler = schedule.scheduler(optimizer)

    log_path = out.with_name(out.stem + ".log.csv")
    history, sums, metric_columns = [], {}, [None]  # the CSV columns: known with the first iteration's metrics
    loop = TrainingLoop(out.with_name(out.stem + ".partial.pth"), iterations=total, desc=f"pretrain {method}",
                        optimizer=optimizer, scheduler=scheduler, fingerprint=run_id, fmt=CHECKPOINT_FORMAT,
                        key="run_id", tag="pretext", mismatch="was made with another configuration or data",
                        checkpoint_every=checkpoint_every, epoch_length=per_epoch, save_every_epoch=True,
                        parts={"run_config": run_config, "epoch": lambda loop: loop.iteration // per_epoch,
                               "position": lambda loop: loop.iteration % per_epoch, "method": Part.weights(model),
                               "optimizer": optimizer, "scheduler": Part.scheduler(scheduler), "rng": Part.rng(),
                               "history": lambda loop: history, "sums": lambda loop: sums,
                               "log_bytes": lambda loop: loop.log_bytes,
                               "log_columns": lambda loop: metric_columns[0]})
    torch.manual_seed(derived_seed(seed, _RUN_TAG))  # what forward() draws (MoCo's key shuffle, dropout)
    state = loop.resume()
    if state is not None:
        loop.restore(state)
        history, sums = state["history"], state["sums"]
    # the header is written with the first row, once the method's metrics are known
    loop.log = log = CsvLog(log_path, None, state["log_bytes"] if state is not None else None)
    if not log.fresh:
        metric_columns[0] = state["log_columns"]
    dataset = PretextDataset(paths, model, seed)
    plain = DataLoader(ImageFileDataset(paths, plain_transform(image_size)), batch_size=batch_size,
                       num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
    began = time.time()

    def batches():
        nonlocal sums
        for epoch in range(loop.start // per_epoch, epochs):
            position = loop.iteration - epoch * per_epoch
            if position == 0:
                model.epoch_start(epoch, plain, device)
                model.train()
                sums = {}
            # a loader per epoch: its workers fork after epoch_start, so sample() sees its state
            # its own generator: a loader draws a base seed, which must not come from the global RNG
            # (forward's draws, checkpointed) or a resumed run would draw it at another moment
            order = model.epoch_indices(seed, epoch, len(paths))
            yield from DataLoader(dataset, batch_sampler=EpochBatches(len(paths), batch_size, seed, epoch, position,
                                                                      order),
                                  num_workers=num_workers, pin_memory=device.type == "cuda",
                                  generator=torch.Generator().manual_seed(derived_seed(seed, _RUN_TAG, epoch)))

    def step(batch, iteration):
        batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        return model(batch)

    def record(iteration, lr, loss, metrics):
        epoch = iteration // per_epoch
        value = float(loss.detach())
        for key, metric in (("loss", value), *metrics.items()):
            sums[key] = sums.get(key, 0.0) + float(metric)
        sums["count"] = sums.get("count", 0.0) + 1
        if metric_columns[0] is None:
            metric_columns[0] = sorted(metrics)
            log.header(["iteration", "epoch", "lr", "loss", *metric_columns[0]])
        log.row([iteration, epoch, f"{lr:.6g}", f"{value:.5f}",
                 *(f"{metrics.get(c, float('nan')):.5f}" for c in metric_columns[0])])
        return {"epoch": epoch, "loss": f"{value:.3f}", **{k: f"{v:.3f}" for k, v in list(metrics.items())[:2]}}

    def diverged(value, iteration, lr):
        return f"pretext {method}: the loss is {value} at iteration {iteration} (lr {lr:.3g}); lower the learning rate"

    model.train()
    loop.run(batches(), step, record=record, after_step=model.after_step, diverged=diverged,
             epoch_end=lambda iteration: history.append(round(sums["loss"] / sums["count"], 5)))

    arch_obj = get_architecture(arch)
    meta = {
        "method": method, "options": options, "arch": arch, "image_size": image_size, "seed": seed,
        "epochs": epochs, "batch_size": batch_size, "iterations": total, "training": training,
        "optimizer": training.get("optimizer", "sgd"), "schedule": f"cosine, {warmup} warm-up iterations",
        "data": described, "num_images": len(paths), "data_fingerprint": fingerprint,
        **subset_meta(data_fraction, data_seed, len(paths), total_images),
        "final_loss": history[-1], "loss_history": history,
        "final_metrics": {k: round(v / sums["count"], 5) for k, v in sums.items() if k not in ("loss", "count")},
        "run_id": run_id, "train_seconds_last_session": round(time.time() - began, 1),
        "ssl_bench_version": __version__, "log_csv": str(log_path),
    }
    state_dict = {k: v.detach().cpu().clone() for k, v in trunk_state_dict(arch_obj, model.trunk).items()}
    # metadata first: the checkpoint's existence is what marks training as done
    atomic_write(out.with_suffix(".json"), json.dumps(meta, indent=1))
    atomic_torch_save({"state_dict": state_dict, "meta": meta}, out)
    loop.path.unlink(missing_ok=True)
    return meta
