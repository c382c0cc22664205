"""Mutation testing of the pure modules with mutmut, one module at a time (`make mutants`).

mutmut reads its settings from the pyproject.toml in the directory it runs in and mutates a copy of
the sources under ./mutants. To run each module against only the test files that exercise it (the
machine is small and shared), this script lays out one work directory per module under
.mutation/<module>/ (a copy of edgepose/, tests/ and a pyproject.toml whose [tool.mutmut] names that
module and those tests), runs `mutmut run` there, and reads mutmut's per-mutant results back from
`mutmut results --all true`.

The per-module score (killed / (total - equivalent)) goes to docs/mutation.json; docs/mutation.md
explains the surviving mutants that are equivalent (no test can tell them from the original).

    python scripts/mutation.py                      # every module in MODULES
    python scripts/mutation.py edgepose/geometry.py  # one module
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutation"
RESULTS = ROOT / "docs" / "mutation.json"
EQUIVALENT = ROOT / "docs" / "mutation-equivalent.json"
REPORT = ROOT / "docs" / "mutation.md"

# The pure modules and the fast test files that exercise them (no broker, no subprocess, no model
# where a model is not what the module is about). mutmut runs, for each mutant, only the tests
# among these that call the mutated function.
MODULES: dict[str, list[str]] = {
    "edgepose/geometry.py": [
        "tests/test_geometry.py",
        "tests/test_movenet.py",
        "tests/test_crop.py",
        "tests/test_accuracy.py",
    ],
    "edgepose/crop.py": ["tests/test_crop.py", "tests/test_smart_crop.py"],
    "edgepose/smoothing.py": ["tests/test_smoothing.py"],
    "edgepose/inference/movenet.py": [
        "tests/test_movenet.py",
        "tests/test_stages.py",
        "tests/test_tiny_models.py",
        "tests/test_accuracy.py",
    ],
    "edgepose/mqtt/payloads.py": ["tests/test_payloads.py"],
    # Added by later issues, of the same kind: pure functions over payloads.
    "edgepose/mqtt/decode.py": ["tests/test_decode.py", "tests/test_payloads.py"],
    "edgepose/config.py": ["tests/test_config.py", "tests/test_config_parts.py", "tests/test_config_hardening.py"],
}

# mutmut's status names, as `mutmut results --all true` prints them.
KILLED = {"killed", "timeout", "segfault", "suspicious"}
NOT_RUN = {"not checked", "skipped", "no tests"}
_RESULT_LINE = re.compile(r"^\s*(?P<name>\S+): (?P<status>.+?)\s*$")


@dataclass(frozen=True)
class Mutant:
    """A surviving mutant by what it changes, not by mutmut's number (which shifts when code is edited)."""

    name: str
    function: str  # e.g. edgepose.geometry.x_crop_and_resize_into
    removed: str  # the original line(s), stripped
    added: str  # the mutated line(s), stripped

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "removed": self.removed, "added": self.added}

    def explained_by(self, equivalent: list[dict[str, str]]) -> str | None:
        for entry in equivalent:
            if (entry["function"], entry["removed"], entry["added"]) == (self.function, self.removed, self.added):
                return entry["reason"]
        return None


def _function_of(name: str) -> str:
    return name.rsplit("__mutmut_", 1)[0]


def describe(work: Path, mutmut: Path, name: str) -> Mutant:
    shown = subprocess.run([str(mutmut), "show", name], cwd=work, check=True, capture_output=True, text=True).stdout
    removed = [line[1:].strip() for line in shown.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:].strip() for line in shown.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return Mutant(name, _function_of(name), "\n".join(removed), "\n".join(added))


@dataclass(frozen=True)
class ModuleScore:
    module: str
    total: int
    killed: int
    survivors: list[Mutant]
    equivalent: list[Mutant]
    seconds: float

    @property
    def score(self) -> float:
        """Killed over the mutants that can be killed: equivalent ones (listed, explained) are left out."""
        killable = self.total - len(self.equivalent)
        return 1.0 if killable == 0 else self.killed / killable

    def as_json(self) -> dict[str, object]:
        return {
            "total": self.total,
            "killed": self.killed,
            "equivalent": len(self.equivalent),
            "survived_not_equivalent": [m.as_json() for m in self.survivors if m not in self.equivalent],
            "score": round(self.score, 4),
            "seconds": round(self.seconds, 1),
        }


def _mutmut_section(module: str, tests: list[str]) -> str:
    quoted = ", ".join(json.dumps(t) for t in tests)
    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["edgepose"]\n'
        'also_copy = ["models", "config"]\n'
        f"only_mutate = [{json.dumps(module)}]\n"
        f"pytest_add_cli_args_test_selection = [{quoted}]\n"
        # Subprocess tests run the installed package, never the mutant; they only cost time here.
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-k", "not cli_"]\n'
    )


def prepare(module: str, tests: list[str]) -> Path:
    work = WORK / Path(module).stem
    # A fresh start every time: mutmut re-tests a function only when its code changed, so a survivor
    # from an earlier run would stay "survived" after a new test that kills it.
    if work.exists():
        shutil.rmtree(work)
    for tree in ("edgepose", "tests", "models", "config"):
        shutil.copytree(ROOT / tree, work / tree, ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = (ROOT / "pyproject.toml").read_text()
    (work / "pyproject.toml").write_text(pyproject + _mutmut_section(module, tests))
    return work


def run_module(
    module: str, tests: list[str], mutmut: Path, children: int, equivalent: list[dict[str, str]]
) -> ModuleScore:
    work = prepare(module, tests)
    started = time.monotonic()
    subprocess.run([str(mutmut), "run", "--max-children", str(children)], cwd=work, check=True)
    seconds = time.monotonic() - started
    listing = subprocess.run(
        [str(mutmut), "results", "--all", "true"], cwd=work, check=True, capture_output=True, text=True
    ).stdout
    statuses: dict[str, str] = {}
    for line in listing.splitlines():
        match = _RESULT_LINE.match(line)
        if match:
            statuses[match["name"]] = match["status"]
    killed = sum(1 for status in statuses.values() if status in KILLED)
    left = sorted(name for name, status in statuses.items() if status == "survived" or status in NOT_RUN)
    survivors = [describe(work, mutmut, name) for name in left]
    explained = [m for m in survivors if m.explained_by(equivalent)]
    return ModuleScore(module, len(statuses), killed, survivors, explained, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: all of MODULES)")
    parser.add_argument("--children", type=int, default=1, help="mutants tested in parallel (default 1)")
    parser.add_argument("--min-score", type=float, default=0.9, help="fail when a module scores below this")
    parser.add_argument(
        "--report-only", action="store_true", help="re-score docs/mutation.json with the equivalent list; run nothing"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="the JSON to update (default docs/mutation.json)")
    args = parser.parse_args(argv)
    if args.report_only:
        return rescore(args.min_score)
    modules = args.modules or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        parser.error(f"not a module with a mutation test list: {', '.join(unknown)}")
    mutmut = Path(sys.executable).parent / "mutmut"
    equivalent: list[dict[str, str]] = json.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else []
    results_path: Path = args.results
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.setdefault("modules", {})
    failing = []
    for module in modules:
        score = run_module(module, MODULES[module], mutmut, args.children, equivalent)
        results["modules"][module] = score.as_json()
        results["tool"] = f"mutmut {importlib.metadata.version('mutmut')}"
        results_path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        print(f"{module}: {score.killed}/{score.total - len(score.equivalent)} killed ({score.score:.1%})")
        if score.score < args.min_score:
            failing.append(module)
    REPORT.write_text(report(results, equivalent))
    if failing:
        print(f"below {args.min_score:.0%}: {', '.join(failing)}", file=sys.stderr)
        return 1
    return 0


def _mutant_of(module: str, entry: str | dict[str, str]) -> Mutant:
    if isinstance(entry, str):  # a bare name (older results): ask mutmut in the module's work directory
        mutmut = Path(sys.executable).parent / "mutmut"
        return describe(WORK / Path(module).stem, mutmut, entry)
    return Mutant(entry["name"], _function_of(entry["name"]), entry["removed"], entry["added"])


def rescore(min_score: float) -> int:
    """Apply the current equivalent list to the committed results (after explaining more survivors)."""
    equivalent: list[dict[str, str]] = json.loads(EQUIVALENT.read_text())
    results = json.loads(RESULTS.read_text())
    failing = []
    for module, row in results["modules"].items():
        left = [
            Mutant(m["name"], _function_of(m["name"]), m["removed"], m["added"]) for m in row["survived_not_equivalent"]
        ]
        now_equivalent = [m for m in left if m.explained_by(equivalent)]
        row["equivalent"] += len(now_equivalent)
        row["survived_not_equivalent"] = [m.as_json() for m in left if m not in now_equivalent]
        killable = row["total"] - row["equivalent"]
        row["score"] = round(1.0 if killable == 0 else row["killed"] / killable, 4)
        if row["score"] < min_score:
            failing.append(module)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    REPORT.write_text(report(results, equivalent))
    if failing:
        print(f"below {min_score:.0%}: {', '.join(failing)}", file=sys.stderr)
        return 1
    return 0


def report(results: dict[str, Any], equivalent: list[dict[str, str]]) -> str:
    """docs/mutation.md: the score table and every equivalent mutant with the reason."""
    lines = [
        "# Mutation scores",
        "",
        f"Written by `make mutants` ({results.get('tool', 'mutmut')}); how it runs: [testing.md](testing.md).",
        "Score = killed / (mutants - equivalent). Raw numbers: [mutation.json](mutation.json).",
        "",
        "| module | mutants | killed | equivalent | survived | score |",
        "|---|---|---|---|---|---|",
    ]
    for module, row in sorted(results["modules"].items()):
        survived = len(row["survived_not_equivalent"])
        lines.append(
            f"| `{module}` | {row['total']} | {row['killed']} | {row['equivalent']} | {survived} | {row['score']:.1%} |"
        )
    lines += ["", "## Equivalent mutants", "", "No test can tell these changes from the original code:", ""]
    for entry in sorted(equivalent, key=lambda e: (e["function"], e["removed"], e["added"])):
        function = entry["function"].replace(".x\u01c1", ".").replace("\u01c1", ".").replace(".x_", ".")
        change = f"`{entry['removed']}` → `{entry['added']}`".replace("\n", " ")
        lines.append(f"- `{function}`: {change}: {entry['reason']}")
    survivors = [(m, s) for m, row in sorted(results["modules"].items()) for s in row["survived_not_equivalent"]]
    if survivors:
        lines += ["", "## Surviving mutants not yet killed", ""]
        for _, mutant in survivors:
            change = f"`{mutant['removed']}` → `{mutant['added']}`".replace("\n", " ")
            lines.append(f"- `{mutant['name']}`: {change}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    # mutmut traces every call while it maps tests to functions: time limits in tests get this much slack.
    os.environ.setdefault("EDGEPOSE_TEST_SLOWDOWN", "10")
    # The tests' shared data (model mirror, truth photos) sits beside the checkout, not in the copies.
    os.environ.setdefault("EDGEPOSE_SHARED_DIR", str(ROOT.parent / "shared"))
    sys.exit(main())
