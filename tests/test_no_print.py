"""Library code logs (``logging.getLogger(__name__)``) instead of printing, read from the source
(ast): what it says can then be filtered, redirected or silenced by a program that uses ssl-bench,
and the command line shows it as it always did (``benchmark.console_log``). Only the output of the
sub-commands themselves is printed: it is what the user asked for, on stdout."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("benchmark", "tasks", "pretrainers")
# The command line: every sub-command's output (tables, leaderboards, listings) and its one-line errors
PRINTING_MODULES = {"benchmark.cli"}
# Functions that are a sub-command's output, written by the library module that computes it
PRINTING_FUNCTIONS = {
    ("benchmark.check", "run_check"): "the report of `ssl-bench check`, ending in its RESULT line",
    ("benchmark.run.status", "print_status"): "what `ssl-bench status` shows",
    ("pretrainers.pretext.command", "run_pretrain"): "what `ssl-bench pretrain` wrote, and how to use it",
    # tqdm's one-line-per-step form for logs and pipes: like tqdm, it writes to the stream it is given
    ("benchmark.training.progress", "LineProgress._line"): "a progress bar",
}


class _PrintFinder(ast.NodeVisitor):
    def __init__(self):
        self.scope: list[str] = []
        self.found: list[tuple[int, str]] = []

    def _enter(self, node, outer: list[ast.AST]) -> None:
        for expression in outer:  # decorators, defaults, bases: evaluated in the enclosing scope
            self.visit(expression)
        self.scope.append(node.name)
        for statement in node.body:
            self.visit(statement)
        self.scope.pop()

    def visit_FunctionDef(self, node) -> None:
        self._enter(node, [*node.decorator_list, *node.args.defaults, *filter(None, node.args.kw_defaults)])

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node) -> None:
        self._enter(node, [*node.decorator_list, *node.bases])

    def visit_Name(self, node) -> None:
        if node.id == "print" and isinstance(node.ctx, ast.Load):
            self.found.append((node.lineno, ".".join(self.scope) or "<module>"))


def print_uses(source: str) -> list[tuple[int, str]]:
    """(line, enclosing Class.function or '<module>') of every use of ``print``: a call, or the
    function passed on (``log=print``)."""
    finder = _PrintFinder()
    finder.visit(ast.parse(source))
    return sorted(set(finder.found))


def library_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def test_library_code_logs_instead_of_printing() -> None:
    offending = [f"{module}:{line} ({scope})" for module, path in library_modules().items()
                 if module not in PRINTING_MODULES for line, scope in print_uses(path.read_text())
                 if (module, scope) not in PRINTING_FUNCTIONS]
    assert not offending, ("log with logging.getLogger(__name__) (info: shown on stdout, warning: on stderr) "
                           "instead of print:\n" + "\n".join(offending))


def test_the_printing_functions_still_exist_and_print() -> None:
    """An entry of PRINTING_FUNCTIONS whose function was renamed or stopped printing is stale."""
    modules = library_modules()
    stale = [f"{module}:{scope}" for module, scope in PRINTING_FUNCTIONS
             if scope not in {s for _, s in print_uses(modules[module].read_text())}]
    assert not stale, f"PRINTING_FUNCTIONS names functions that no longer print: {stale}"


def test_print_uses_finds_calls_and_passed_functions_with_their_scope() -> None:
    source = '''
print("module")
class Runner:
    def run(self, log=print):
        def inner():
            print("inner")
        return [print(x) for x in ()]
def helper():
    return print
'''
    assert print_uses(source) == [(2, "<module>"), (4, "Runner"), (6, "Runner.run.inner"), (7, "Runner.run"),
                                  (9, "helper")]
