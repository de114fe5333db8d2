"""The house rules of the package layout, checked on every import statement (lazy ones inside functions too).

Components (data, models, rl, accel, judges, eval, and the top-level config, checkpoint, tracking, distributed,
run) never import a stage; a stage never imports another stage (the pipeline, which runs them all, excepted);
the feedback app imports only record formats (``data/formats.py``), the gold judges, the config and the evaluation's
statistics (``eval/metrics.py``: plain functions on lists, so the arena's win rate is computed as eval's is); the RL
maths imports nothing but torch and the standard library.
"""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "rlhfkit"
RUNS_STAGES = {"rlhfkit.stages.pipeline", "rlhfkit.cli", "rlhfkit.__main__"}
FEEDBACK_MAY_IMPORT = ("rlhfkit.feedback", "rlhfkit.data.formats", "rlhfkit.judges", "rlhfkit.config", "rlhfkit.eval.metrics")
RL_MAY_IMPORT = ("rlhfkit.rl", "torch", "__future__")


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, package: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import in the file; ``from a import b`` counts as a.b when b is a module."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = package.parent / f"{node.module}.{a.name}".replace(".", "/")
                found.append((node.lineno, f"{node.module}.{a.name}" if sub.with_suffix(".py").exists() or sub.is_dir() else node.module))
    return sorted(set(found))


def within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(package: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(package.rglob("*.py")):
        me = module_name(path, package)
        where = path.relative_to(package.parent)
        for line, name in imports(path, package):
            if within(me, ("rlhfkit.stages",)) and within(name, ("rlhfkit.stages",)) and me not in RUNS_STAGES:
                out.append(f"{where}:{line}: the stage {me} imports the stage {name}")
            elif not within(me, ("rlhfkit.stages", "rlhfkit.feedback")) and me not in RUNS_STAGES and within(name, ("rlhfkit.stages", "rlhfkit.cli")):
                out.append(f"{where}:{line}: the component {me} imports the stage {name}")
            if within(me, ("rlhfkit.feedback",)) and within(name, ("rlhfkit",)) and not within(name, FEEDBACK_MAY_IMPORT):
                out.append(f"{where}:{line}: the feedback app ({me}) imports training code {name}")
            if within(me, ("rlhfkit.rl",)) and not within(name, RL_MAY_IMPORT) and name.split(".")[0] not in sys.stdlib_module_names:
                out.append(f"{where}:{line}: the RL maths ({me}) imports {name}")
    return out


def test_components_import_no_stage_stages_no_other_stage_and_feedback_no_training_code():
    assert violations() == []


@pytest.mark.parametrize("module, source, broken", [
    ("models/bad.py", "from rlhfkit.stages.sft import train_sft", "the component rlhfkit.models.bad imports the stage rlhfkit.stages.sft"),
    ("models/bad.py", "def f():\n    from rlhfkit.stages import sft", "the component rlhfkit.models.bad imports the stage rlhfkit.stages.sft"),
    ("stages/ppo.py", "from rlhfkit.stages.sft import train_sft", "the stage rlhfkit.stages.ppo imports the stage rlhfkit.stages.sft"),
    ("feedback/app.py", "import rlhfkit.models.loading", "the feedback app (rlhfkit.feedback.app) imports training code rlhfkit.models.loading"),
    ("rl/losses.py", "import numpy as np", "the RL maths (rlhfkit.rl.losses) imports numpy"),
])
def test_the_check_sees_each_broken_rule_even_inside_a_function(module, source, broken, tmp_path):
    package = tmp_path / "rlhfkit"
    for name in ("stages/sft.py", "stages/ppo.py", "models/bad.py", "feedback/app.py", "rl/losses.py"):
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text("import json\n", encoding="utf-8")
    assert violations(package) == []
    (package / module).write_text(source + "\n", encoding="utf-8")
    assert [broken in v for v in violations(package)] == [True]
