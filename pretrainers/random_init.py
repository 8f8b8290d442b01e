"""`random`: the architecture's default initialisation from a recorded seed (the floor baseline)."""

from benchmark.engine import LoadedModel, Pretrainer, RunContext
from benchmark.models import create_model
from benchmark.registry import PRETRAINERS

from . import freeze


@PRETRAINERS.register("random")
class RandomInit(Pretrainer):
    options = {"arch": "resnet50", "seed": 0}
    trains = False

    def build(self, ctx: RunContext, model_name: str) -> LoadedModel:
        arch, seed = self.config["arch"], self.config["seed"]
        model = create_model(arch, seed=seed)
        return freeze(model_name, arch, model, {"pretrainer": "random", "init_seed": seed})
