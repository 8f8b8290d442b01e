"""The options reference: every declared option of the suite, its executor, each task, each
pretrainer and each plugin a pretrainer chooses by name (the pretext methods behind
``method_options``), with its type, the values it accepts and its default, read from the
declarations themselves (``benchmark.options``), so the reference cannot drift from the checks.

``ssl-bench list options [NAME]`` prints it as text; ``python -m benchmark.options_reference``
writes the Markdown page ``docs/options.md`` (a test regenerates it and compares).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from .options import (Anything, Bool, Choice, Device, Float, Int, Layers, ListOf, MappingOf, Name, OneOf, Option,
                      PluginOptions, Range, Registered, Str, declared)

# the declaration classes, most specific first, as the reference names their type
TYPE_NAMES: list[tuple[type, str]] = [
    (Layers, "layers"), (Range, "range"), (ListOf, "list"), (MappingOf, "mapping"), (OneOf, "one of"),
    (PluginOptions, "options"), (Registered, "name"), (Choice, "choice"), (Device, "device"), (Name, "name"),
    (Int, "integer"), (Float, "number"), (Bool, "boolean"), (Str, "string"), (Anything, "any"),
]


@dataclass
class Section:
    key: str  # what `ssl-bench list options KEY` selects
    title: str
    options: dict[str, Option] = field(default_factory=dict)


def type_name(option: Option) -> str:
    return next((name for cls, name in TYPE_NAMES if isinstance(option, cls)), type(option).__name__)


def default_text(value: Any) -> str:
    """A default as it would be written in benchmark.yaml."""
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value, default=str)


def sections() -> list[Section]:
    """Suite, executor, tasks, pretrainers, then the plugins a pretrainer's or task's option chooses."""
    from .config import EXECUTOR_OPTIONS, SUITE_OPTIONS
    from .registry import PRETRAINERS, TASKS

    found = [Section("suite", "Suite (`suites.NAME`)", declared(SUITE_OPTIONS)),
             Section("executor", "Executor (`suites.NAME.executor`)", declared(EXECUTOR_OPTIONS))]
    chosen: list[Section] = []
    for kind, registry in (("task", TASKS), ("pretrainer", PRETRAINERS)):
        for name in registry.names():
            spec = declared(getattr(registry.get(name), "options", {}))
            found.append(Section(name, f"{kind.capitalize()} `{name}`", spec))
            for key, option in spec.items():
                if isinstance(option, PluginOptions):
                    for plugin in option.registry.names():
                        chosen.append(Section(plugin, f"`{key}` of {kind} `{name}` with `{option.chosen_by}: {plugin}`",
                                              declared(getattr(option.registry.get(plugin), "options", {}))))
    return found + chosen


def select(all_sections: list[Section], name: str | None) -> list[Section]:
    if name is None:
        return all_sections
    picked = [section for section in all_sections if section.key == name]
    if not picked:
        from .errors import ConfigError
        from .registry import closest

        keys = [section.key for section in all_sections]
        raise ConfigError(f"no options for '{name}'.{closest(name, keys)} Names: {', '.join(keys)}")
    return picked


def text(name: str | None = None) -> str:
    lines = []
    for section in select(sections(), name):
        lines.append(section.title.replace("`", ""))
        for key, option in section.options.items():
            lines.append(f"  {key}: {type_name(option)}, default {default_text(option.default)}; {accepts(option)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def accepts(option: Option) -> str:
    """What ``option`` accepts; a registry's open-ended families (``timm/<model>``) included."""
    text = option.allowed()
    if isinstance(option, Registered) and hasattr(option.registry, "family_prefixes"):
        text += "".join(f", or {prefix}<model>" for prefix in option.registry.family_prefixes())
    return text


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def markdown(name: str | None = None) -> str:
    lines = [
        "# Options reference",
        "",
        "Every option ssl-bench accepts in a suite file, with its type, the values it accepts and its",
        "default. This page is generated from the declarations the options are checked against",
        "(`python -m benchmark.options_reference > docs/options.md`; a test fails when it is out of",
        "date); `ssl-bench list options NAME` prints the same for one task, pretrainer or method.",
        "A value outside what is listed stops `ssl-bench run` before any work, naming the key.",
        "",
    ]
    for section in select(sections(), name):
        lines += [f"## {section.title}", ""]
        if not section.options:
            lines += ["No options.", ""]
            continue
        lines += ["| option | type | default | accepts |", "|---|---|---|---|"]
        for key, option in section.options.items():
            lines.append(f"| `{key}` | {type_name(option)} | `{_cell(default_text(option.default))}` "
                         f"| {_cell(accepts(option))} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sys.stdout.write(markdown(argv[0] if argv else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
