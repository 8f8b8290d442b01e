"""`checkpoint`: a state_dict file (torchvision, MoCo, VISSL, DINO layouts; for timm/<model>
architectures also timm, .safetensors, DINO/iBOT, DINOv2/v3, MAE, MoCo v3 and Hugging Face
save_pretrained folders), loaded strictly."""

from pathlib import Path

from benchmark.checkpoint import load_trunk_weights
from benchmark.engine import LoadedModel, Pretrainer, RunContext
from benchmark.models import create_model
from benchmark.models.backbone import get_architecture
from benchmark.options import Str, declare

from .common import ARCH, freeze


class CheckpointFile(Pretrainer):
    name = "checkpoint"
    # which: the sub-network to take from DINO-style {"teacher", "student"} checkpoints
    options = declare({"arch": ARCH, "path": Str(None, required=True, rule="the path of a .pth/.pt/.torch/.safetensors file or a Hugging "
                                               "Face save_pretrained folder"),
                       "which": Str("teacher")})
    trains = False

    def build(self, ctx: RunContext, model_name: str) -> LoadedModel:
        path = Path(self.config.path).expanduser()
        arch_name = self.config.arch
        model = create_model(arch_name, seed=0)
        arch = get_architecture(arch_name)
        info = load_trunk_weights(model, arch, path, which=self.config.which)
        # weights trained elsewhere expect the normalisation of their timm pretrained_cfg
        family = arch.family_info
        stats = (family.mean, family.std) if family is not None and family.stats == "pretrained" else None
        return freeze(model_name, arch_name, model, {"pretrainer": "checkpoint", **info}, input_stats=stats)
