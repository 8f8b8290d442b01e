"""``ssl-bench eval``: your checkpoints on a suite's tasks without writing a YAML file.

The suite is written for you as YAML and copied into the run directory as every run's config is
(``RUN_DIR/config.yaml``), so the same run is ``ssl-bench run --config RUN_DIR/config.yaml --suite
NAME``. Nothing is written before the run's own checks (data, checkpoints) have passed.
"""

from __future__ import annotations

from pathlib import Path


from .config import DEFAULT_CONFIG, check_name, load_yaml
from .errors import ConfigError
from .registry import closest


def parse_task_layers(specs: list[str] | None) -> dict[str, list[str] | None]:
    """``voc07_svm:res4,res5 knn`` -> {'voc07_svm': ['res4', 'res5'], 'knn': None} (None: the task's
    layers for each architecture family, its default)."""
    chosen: dict[str, list[str] | None] = {}
    for spec in specs or []:
        name, _, layers = spec.partition(":")
        if not name or (layers and not all(layers.split(","))):
            raise ConfigError(f"--tasks {spec!r}: give a task name, optionally with layers: TASK or TASK:L1,L2")
        chosen[name] = layers.split(",") if layers else None
    return chosen


def model_names(checkpoints: list[Path]) -> list[str]:
    """A name per checkpoint from its file name (res50_dino.pth -> res50_dino), made unique."""
    names: list[str] = []
    for path in checkpoints:
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(path).stem) or "model"
        name, n = stem, 2
        while name in names:
            name, n = f"{stem}_{n}", n + 1
        names.append(name)
    return names


def eval_suite(checkpoints: list[Path], archs: list[str], base: str, tasks: list[str] | None,
               config: Path = DEFAULT_CONFIG, prefix: str | None = None) -> tuple[str, dict]:
    """The suite ``eval`` runs: ``base``'s settings and tasks (all, or those named, with their
    layers), its models replaced by the checkpoints. Returns its name and its YAML mapping."""
    if len(archs) not in (1, len(checkpoints)):
        raise ConfigError(f"--arch: give one architecture for every checkpoint, or one per checkpoint "
                          f"({len(checkpoints)}); got {len(archs)}")
    suites = load_yaml(config).get("suites") or {}
    if base not in suites:
        raise ConfigError(f"--suite: no suite '{base}' in {config}.{closest(base, suites)} "
                          f"Suites: {', '.join(sorted(suites))}")
    suite = dict(suites[base])
    chosen = parse_task_layers(tasks)
    for name in chosen:
        if name not in suite.get("tasks", {}):
            raise ConfigError(f"--tasks: suite '{base}' has no task '{name}'.{closest(name, suite['tasks'])} "
                              f"Its tasks: {', '.join(suite['tasks'])}")
    names = model_names(checkpoints)
    archs = archs * len(checkpoints) if len(archs) == 1 else archs
    suite["models"] = {name: {"pretrainer": "checkpoint", "arch": arch, "path": str(Path(path).expanduser().resolve()),
                              **({"prefix": prefix} if prefix else {})}
                       for name, arch, path in zip(names, archs, checkpoints)}
    picked = {}
    for name, options in suite["tasks"].items():
        if chosen and name not in chosen:
            continue
        options = {k: v for k, v in (options or {}).items() if k != "models"}  # every checkpoint, every task
        layers = chosen.get(name)
        if layers:
            options["layers"] = layers
        else:  # each architecture family's own default layers: ResNet stages, ViT blocks
            options.pop("layers", None)
        picked[name] = options
    suite["tasks"] = picked
    suite_name = f"eval-{base}"
    check_name(suite_name, "--suite", "suite name")
    suite["description"] = f"ssl-bench eval: {', '.join(names)} on tasks of '{base}'"
    return suite_name, suite
