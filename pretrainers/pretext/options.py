"""What a pretext training takes, declared without importing torch: the registry of pretext methods
and the options of the `pretext` pretrainer and of `ssl-bench pretrain`, so that a suite is checked
(and a report reads its models' defaults) before any training code is loaded."""

from __future__ import annotations

from benchmark.options import NAME_RULE, Choice, Float, Int, PluginOptions, Registered, Str, declare, name_problem
from benchmark.registry import Registry
from pretrainers.common import ARCH, DATA_FRACTION, DATA_SEED, SEED

# The methods the `pretext` pretrainer and `ssl-bench pretrain` train with, PretextMethod
# subclasses by name: ssl-bench's own and a plugin's alike come through the entry points
PRETEXT_METHODS: Registry = Registry("pretext_methods")

# suite datasets usable as unlabeled images: "NAME:SPLIT" (labels are never read for training)
SUITE_DATASETS = ("voc07", "places205")
# optimiser defaults of the loop; a method's ``training`` ClassVar (its paper's values) overrides
# them, and a value the user gives overrides both
TRAIN_DEFAULTS = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "warmup_epochs": 0}
OPTIMIZERS = ("sgd", "lars")


class ImageSource(Str):
    """An IMAGE_DIR (absolute, or relative to the data root) or a suite dataset ``NAME:SPLIT``,
    whose split is a name (it becomes part of a dataset path)."""

    def describe(self) -> str:
        return (f"an image folder or one of {', '.join(n + ':SPLIT' for n in SUITE_DATASETS)} with SPLIT "
                f"{NAME_RULE}")

    def problem(self, value, where):
        if not isinstance(value, str) or not value:
            return where, value, self.allowed()
        name, sep, split = value.partition(":")
        if sep and name in SUITE_DATASETS and name_problem(split):
            return where, value, self.allowed()
        return None


# What a pretext training takes, declared once: the `pretext` pretrainer's options (a suite
# model) and the arguments of `ssl-bench pretrain` are these
PRETEXT_OPTIONS = declare({
    "method": Registered(PRETEXT_METHODS, None, required=True),  # `ssl-bench list pretext`
    "arch": ARCH,
    "data": ImageSource("voc07:trainval"),  # an IMAGE_DIR (absolute, or relative to the data root) or NAME:SPLIT
    "epochs": Int(30, min=1),
    "batch_size": Int(64, min=1),
    "lr": Float(None, min=0),  # default: the method's paper value
    "optimizer": Choice(*OPTIMIZERS, default=None),  # sgd (default) | lars
    "image_size": Int(224, min=16),
    "seed": SEED,
    "method_options": PluginOptions(PRETEXT_METHODS, "method"),
    "data_fraction": DATA_FRACTION,  # a nested subset of the images (a sweep's data-size axis)
    "data_seed": DATA_SEED,
})
# the loop's own settings, beyond a suite model's identity
LOOP_OPTIONS = declare({
    **PRETEXT_OPTIONS.spec,
    "momentum": Float(None, min=0), "weight_decay": Float(None, min=0), "warmup_epochs": Float(None, min=0),
    "num_workers": Int(2, min=0), "checkpoint_every": Int(500, min=1),
})
