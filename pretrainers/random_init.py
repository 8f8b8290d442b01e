"""`random`: the architecture's default initialisation from a recorded seed (the floor baseline)."""

from benchmark.plugin_api import LoadedModel, Pretrainer, RunContext
from benchmark.options import declare

from .common import ARCH, SEED, freeze


class RandomInit(Pretrainer):
    name = "random"
    options = declare({"arch": ARCH, "seed": SEED})
    trains = False

    def build(self, ctx: RunContext, model_name: str) -> LoadedModel:
        from benchmark.models import create_model

        arch, seed = self.config.arch, self.config.seed
        model = create_model(arch, seed=seed)
        return freeze(model_name, arch, model, {"pretrainer": "random", "init_seed": seed})
