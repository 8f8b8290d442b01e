"""`checkpoint`: a state_dict file (torchvision, MoCo, VISSL, DINO layouts; for timm/<model>
architectures also timm, .safetensors, DINO/iBOT, DINOv2/v3, MAE, MoCo v3 and Hugging Face
save_pretrained folders), loaded strictly."""

import logging
from pathlib import Path

from benchmark.plugin_api import LoadedModel, Pretrainer, RunContext
from benchmark.errors import BenchmarkError
from benchmark.options import Str, declare

from .common import ARCH, freeze

logger = logging.getLogger(__name__)


class CheckpointFile(Pretrainer):
    name = "checkpoint"
    # which: the sub-network to take from DINO-style {"teacher", "student"} checkpoints
    # prefix: take only the keys under it, without it (a Lightning module's 'model.backbone.'); the
    # common wrappers (DDP 'module.', MoCo 'encoder_q.', 'backbone.', ...) are stripped without it
    options = declare({"arch": ARCH,
                       "path": Str(None, required=True, rule="the path of a .pth/.pt/.torch/.safetensors file or a "
                                                             "Hugging Face save_pretrained folder"),
                       "which": Str("teacher"), "prefix": Str(None)})
    trains = False

    def check_inputs(self, ctx: RunContext, model_name: str) -> None:
        from benchmark.models.backbone import get_architecture

        try:
            self._load()
        except BenchmarkError as exc:
            raise type(exc)(f"model '{model_name}': {exc}") from None
        # input statistics are never chosen silently: said before any work, and in every row
        family = get_architecture(self.config.arch).family_info
        notice = family.stats_notice() if hasattr(family, "stats_notice") else None
        if notice:
            logger.warning("note: model '%s': %s", model_name, notice)

    def _load(self) -> tuple[str, object, dict]:
        from benchmark.checkpoint import load_trunk_weights
        from benchmark.models import create_model
        from benchmark.models.backbone import get_architecture

        path = Path(self.config.path).expanduser()
        model = create_model(self.config.arch, seed=0)
        info = load_trunk_weights(model, get_architecture(self.config.arch), path, which=self.config.which,
                                  prefix=self.config.prefix)
        return self.config.arch, model, info

    def build(self, ctx: RunContext, model_name: str) -> LoadedModel:
        from benchmark.models.backbone import get_architecture

        arch_name, model, info = self._load()
        arch = get_architecture(arch_name)
        # weights trained elsewhere expect the normalisation of their timm pretrained_cfg
        family = arch.family_info
        stats = (family.mean, family.std) if family is not None and family.stats == "pretrained" else None
        return freeze(model_name, arch_name, model, {"pretrainer": "checkpoint", **info}, input_stats=stats)
