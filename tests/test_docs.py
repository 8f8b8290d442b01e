"""The documentation stays true to the code: every `ssl-bench ...` command shown in README.md and
docs/ parses with the real command line (a renamed flag fails here), every `make` target shown
exists, the generated pages (options reference, mini-suite numbers) are up to date, the site builds
strictly (no broken link or anchor), and the user docs hold no development log."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.cli import build_parser, main
from benchmark.options_reference import markdown

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
USER_DOCS = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
README_MAX_LINES = 250
SHELL_FENCES = {"bash", "sh", "shell", "console"}
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=\S*")


def shell_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, command) of every line of the shell code blocks of ``path``, continuation
    lines (ending in a backslash) joined, leading `$ ` prompts removed."""
    found, fence, pending, start = [], None, "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip().lower()
            continue
        if fence not in SHELL_FENCES:
            continue
        if not pending:
            start = number
        pending += stripped.removeprefix("$ ")
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        found.append((start, pending))
        pending = ""
    return found


def commands(program: str) -> list[tuple[str, list[str]]]:
    """("file:line", argv after the program) of every shown command line that runs ``program``,
    after any VAR=value assignments; comments dropped."""
    found = []
    for path in USER_DOCS:
        for number, line in shell_lines(path):
            words = shlex.split(line, comments=True)
            while words and ENV_ASSIGNMENT.fullmatch(words[0]):
                words = words[1:]
            if words and words[0] == program:
                found.append((f"{path.relative_to(REPO)}:{number}", words[1:]))
    return found


SSL_BENCH_COMMANDS = commands("ssl-bench")
MAKE_COMMANDS = commands("make")


def test_the_docs_show_the_main_commands() -> None:
    # the extraction must see the commands: an empty list would make the tests below pass vacuously
    shown = {argv[0] for _, argv in SSL_BENCH_COMMANDS}
    assert {"run", "eval", "report", "check", "status", "resume", "list", "data", "pretrain"} <= shown
    assert len(SSL_BENCH_COMMANDS) >= 40
    assert {argv[0] for _, argv in MAKE_COMMANDS} >= {"demo", "test", "detectron2"}


@pytest.mark.parametrize("where,argv", SSL_BENCH_COMMANDS, ids=[w for w, _ in SSL_BENCH_COMMANDS])
def test_every_shown_command_parses(where: str, argv: list[str], capsys) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: 'ssl-bench {shlex.join(argv)}' does not parse (exit {exc.code}):\n"
                    f"{capsys.readouterr().err}")


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):(?!=)", (REPO / "Makefile").read_text(), re.MULTILINE))


def test_every_shown_make_target_exists() -> None:
    targets = makefile_targets()
    missing = [f"{where}: make {argv[0]}" for where, argv in MAKE_COMMANDS
               if next(w for w in argv if not ENV_ASSIGNMENT.fullmatch(w)) not in targets]
    assert not missing, f"make targets the docs show but the Makefile lacks: {missing}"


def test_a_renamed_flag_would_fail() -> None:
    # the check above is only as good as the parser it uses: an unknown flag must not parse
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--suite", "s", "--data-rot", "/d"])


def test_options_page_is_generated_from_the_declarations() -> None:
    assert (DOCS / "options.md").read_text() == markdown(), (
        "docs/options.md is out of date: python -m benchmark.options_reference > docs/options.md")


def test_mini_suite_page_is_generated_from_the_reference() -> None:
    spec = importlib.util.spec_from_file_location("mini_suite_page", REPO / "tools" / "mini_suite_page.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert (DOCS / "mini-suite.md").read_text() == module.page(), (
        "docs/mini-suite.md is out of date: python tools/mini_suite_page.py > docs/mini-suite.md")


def test_list_options_prints_declarations_and_refuses_unknown_names(capsys) -> None:
    assert main(["list", "options", "lowshot_voc07"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Task lowshot_voc07\n")
    assert "  k_values: list, default [1, 2, 4, 8, 16, 32, 64, 96];" in out
    assert main(["list", "options", "rotation"]) == 0
    assert "method: rotation" in capsys.readouterr().out
    assert main(["list", "options", "lowshot_voc7"]) == 2
    assert "Did you mean 'lowshot_voc07'?" in capsys.readouterr().err
    assert main(["list", "tasks", "voc07_svm"]) == 2  # only `list options` takes a NAME


def test_mkdocs_site_builds_strictly(tmp_path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (it comes with the dev extra: pip install -e '.[dev]')")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                            str(REPO / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                           capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert build.returncode == 0, build.stderr[-4000:]
    assert (tmp_path / "site" / "tasks" / "detection" / "index.html").is_file()


def test_readme_is_short() -> None:
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


# a development log: dated entries, numbered optimisation rounds or looks, work sessions, reverts
HISTORY = re.compile(r"\b20\d\d-\d\d-\d\d\b|\b(?:rounds|looks)\b|\b(?:first|second|third|fourth|fifth|sixth|"
                     r"seventh|eighth|ninth|tenth|eleventh|twelfth|thirteenth|next|this|previous|earlier|"
                     r"last)\s+(?:round|look|session)\b|\breverted\b|\bsessions?\b", re.IGNORECASE)


@pytest.mark.parametrize("path", USER_DOCS, ids=[str(p.relative_to(REPO)) for p in USER_DOCS])
def test_user_docs_hold_no_development_log(path: Path) -> None:
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
             for number, line in enumerate(path.read_text().splitlines(), 1) if HISTORY.search(line)]
    assert not found, "development history belongs in git and perf/README.md:\n" + "\n".join(found)


def test_no_reference_to_files_outside_the_repository() -> None:
    # the protocol facts live in the task pages (docs/tasks/), not in a file beside the clone
    offending = [f"{path.relative_to(REPO)}" for folder in ("benchmark", "tasks", "pretrainers", "docs")
                 for path in (REPO / folder).rglob("*") if path.suffix in (".py", ".md")
                 and "shared/PROTOCOL.md" in path.read_text()]
    offending += ["README.md"] if "shared/PROTOCOL.md" in (REPO / "README.md").read_text() else []
    assert not offending, offending


def test_readme_command_table_names_every_sub_command() -> None:
    parser = build_parser()
    sub_commands = next(action.choices for action in parser._actions if isinstance(action.choices, dict))
    readme = (REPO / "README.md").read_text()
    table = {match for match in re.findall(r"^\| `ssl-bench ([a-z-]+)", readme, re.MULTILINE)}
    missing = sorted(set(sub_commands) - table)
    assert not missing, f"README.md's command table lacks: {missing} (ssl-bench --help lists them)"
