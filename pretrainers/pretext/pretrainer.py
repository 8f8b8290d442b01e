"""`pretext`: pretrain a trunk with a pretext method (rotation, jigsaw, simclr, moco, ...) on
unlabeled images, then benchmark it: "pretrain then evaluate" as one suite model.

The checkpoint is keyed by the options and the data fingerprint (``RUN_DIR/checkpoints/``), so a
rerun loads it instead of training again, and an interrupted training resumes from its partial
checkpoint. The trained trunk is loaded back with the benchmark's strict checkpoint loader, the
same path a user's own checkpoint takes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from benchmark.config import config_hash
from benchmark.diskspace import parameter_bytes
from benchmark.plugin_api import LoadedModel, Pretrainer, RunContext
from benchmark.options import Options, identity_options
from benchmark.paths import inside
from pretrainers.common import freeze

from .options import PRETEXT_OPTIONS

if TYPE_CHECKING:
    from benchmark.models import Architecture


class PretextPretrainer(Pretrainer):
    name = "pretext"
    options = PRETEXT_OPTIONS

    @staticmethod
    def check_config(options: Options, where: str) -> None:
        """At load: the method must be able to train the architecture (ViTs: simclr, moco, rotation)."""
        from benchmark.models.backbone import get_architecture

        from .method import PRETEXT_METHODS

        PRETEXT_METHODS.get(options.method).check_arch(get_architecture(options.arch), where)

    def checkpoint_bytes(self, arch: Architecture) -> int:
        return parameter_bytes(arch.name)  # the trained weights; the training state is transient

    def build(self, ctx: RunContext, model_name: str) -> LoadedModel:
        from benchmark.checkpoint import load_trunk_weights
        from benchmark.models import create_model
        from benchmark.models.backbone import get_architecture

        from .trainer import data_fingerprint, resolve_images, select_subset, train_pretext

        cfg = self.config
        where = f"model '{model_name}'"
        paths, root, _ = resolve_images(cfg.data, ctx.data_root)
        if cfg.data_fraction < 1:
            paths = select_subset(paths, root, cfg.data_fraction, cfg.data_seed)
        fingerprint = data_fingerprint(paths, root)
        # an option added later stays out of the hash at its default: earlier checkpoints are found
        identity = {k: v for k, v in identity_options(cfg, PRETEXT_OPTIONS).items()
                    if not (k == "optimizer" and v is None)}
        path = inside(ctx.run_dir, "checkpoints", f"{model_name}-{config_hash({**identity, 'data': fingerprint})}.pth")
        if not path.exists():
            train_pretext(cfg.method, cfg.data, path, arch=cfg.arch, epochs=cfg.epochs,
                          batch_size=cfg.batch_size, lr=cfg.lr, image_size=cfg.image_size, seed=cfg.seed,
                          device=ctx.device, method_options=cfg.method_options, num_workers=ctx.num_workers,
                          optimizer=cfg.optimizer, data_fraction=cfg.data_fraction, data_seed=cfg.data_seed,
                          data_root=ctx.data_root, where=where)
        model = create_model(cfg.arch, seed=cfg.seed)
        info = load_trunk_weights(model, get_architecture(cfg.arch), path)
        meta = json.loads(path.with_suffix(".json").read_text())
        return freeze(model_name, cfg.arch, model, {"pretrainer": "pretext", **info, **meta})
