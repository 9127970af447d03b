"""`rlvr` is the only import root: no bare `import verifiers/rollouts/baselines` anywhere."""

import ast
import subprocess
import sys

from conftest import REPO

SIBLINGS = {"verifiers", "rollouts", "baselines", "experiments"}


def _python_files():
    for folder in ("rlvr", "rollouts", "verifiers", "baselines", "tests", "scripts"):
        yield from (REPO / folder).rglob("*.py")


def test_no_bare_sibling_imports():
    bad = []
    for path in _python_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            bad += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n.split(".")[0] in SIBLINGS]
    assert not bad, "bare imports of sibling folders (use rlvr.<name>):\n" + "\n".join(bad)


def test_every_installed_package_starts_with_rlvr():
    from setuptools.config.setupcfg import read_configuration

    opts = read_configuration(REPO / "setup.cfg")["options"]
    assert all(p == "rlvr" or p.startswith("rlvr.") for p in opts["packages"])
    assert opts["package_dir"] == {
        "rlvr": "rlvr",
        "rlvr.rollouts": "rollouts",
        "rlvr.verifiers": "verifiers",
        "rlvr.baselines": "baselines",
    }


def test_mapped_packages_import_from_their_folders():
    import rlvr.baselines
    import rlvr.rollouts
    import rlvr.verifiers

    for mod, folder in ((rlvr.rollouts, "rollouts"), (rlvr.verifiers, "verifiers"), (rlvr.baselines, "baselines")):
        assert mod.__file__.startswith(str(REPO / folder))
    # and the bare names are not importable from this project
    code = "import importlib.util,sys; sys.exit(any(importlib.util.find_spec(n) for n in ('rollouts','baselines')))"
    assert subprocess.run([sys.executable, "-c", code], cwd="/").returncode == 0
