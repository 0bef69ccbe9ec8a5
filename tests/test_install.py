"""supervisor installs the usual ways: a wheel built from this checkout, in a clean virtual
environment with no workspace around it, gives a working `supervisor` with autoresearch
loaded, and a third-party plugin installed beside it (the reference plugin, written from
docs/plugins.md against the public API) passes its own tests there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

UV = REPO / ".tools" / "bin" / "uv"


def sh(*args: object, **kw: object) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kw)  # type: ignore[call-overload]
    assert out.returncode == 0, f"{args}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not UV.exists():
        pytest.fail("uv is missing: run ./dev setup first")
    root = tmp_path_factory.mktemp("install")
    dist = root / "dist"
    sh(UV, "build", "--wheel", "--out-dir", dist, REPO)
    sh(UV, "build", "--wheel", "--out-dir", dist, REPO / "tests" / "reference_plugin")
    wheels = sorted(dist.glob("*.whl"))
    assert len(wheels) == 2, wheels
    # The locked versions, hash-checked, as `./dev setup` would install them.
    requirements = root / "requirements.txt"
    sh(
        UV, "export", "--frozen", "--no-dev", "--no-emit-project", "-o", requirements,
        cwd=REPO,
    )  # fmt: skip
    venv = root / "venv"
    sh(UV, "venv", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    sh(UV, "pip", "install", "--python", python, "--require-hashes", "-r", requirements)
    sh(UV, "pip", "install", "--python", python, "--no-deps", *wheels)
    sh(UV, "pip", "install", "--python", python, f"pytest=={pytest.__version__}")
    return venv


def test_wheel_installs_into_a_clean_venv(clean_venv: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SUPERVISOR_HOME": str(tmp_path / "home")}
    supervisor = clean_venv / "bin" / "supervisor"
    # Nothing of the checkout is on the path: the package came from the wheel.
    where = sh(
        clean_venv / "bin" / "python", "-c", "import supervisor; print(supervisor.__file__)",
        cwd=tmp_path,
    )  # fmt: skip
    assert str(clean_venv) in where.stdout
    listed = sh(supervisor, "plugins", "list", env=env, cwd=tmp_path)
    assert "✓ autoresearch" in listed.stdout
    assert "✓ reference" in listed.stdout
    recipes = sh(supervisor, "recipe", "list", env=env, cwd=tmp_path)
    assert "autoresearch" in recipes.stdout and "reference-tally" in recipes.stdout
    # The sandbox image's sources and the example travel inside the wheel.
    shown = sh(supervisor, "recipe", "show", "autoresearch", env=env, cwd=tmp_path)
    assert "autoresearch" in shown.stdout


def test_reference_plugin_passes_its_own_tests(clean_venv: Path, tmp_path: Path) -> None:
    tests = tmp_path / "plugin_tests"
    shutil.copytree(REPO / "tests" / "reference_plugin" / "tests", tests)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SUPERVISOR_", "PYTEST"))},
        "PATH": f"{clean_venv / 'bin'}:{os.environ['PATH']}",
    }
    out = subprocess.run(
        [clean_venv / "bin" / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", tests],
        capture_output=True,
        text=True,
        env=env,
        cwd=tests,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]
    assert "4 passed" in out.stdout
