"""The package as a user installs it: a wheel that carries conf/, console scripts that work from
any folder, a core install that runs without the optional extras, and one error line naming the
extra when an option needs one that is missing.

A missing extra is simulated by a ``sitecustomize.py`` that puts ``None`` into ``sys.modules`` for
its modules, which makes both ``import`` and ``importlib.util.find_spec`` report them absent.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from helpers import ROOT, read_summary

from sparsegap.extras import EXTRAS

OPTIONAL_MODULES = sorted({name for modules in EXTRAS.values() for name in modules})


def _blocking(tmp_path: Path, modules: list[str]) -> dict[str, str]:
    """An environment in which ``modules`` cannot be imported (see the module docstring)."""
    site = tmp_path / "block"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        f"import sys\nfor name in {modules!r}:\n    sys.modules[name] = None\n"
    )
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(site) + (os.pathsep + path if path else "")}


def test_pyproject_lists_every_package():
    """setuptools' package list is explicit (conf/ is mapped to sparsegap.conf): a package folder
    missing from it would be missing from the wheel."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"sparsegap.conf": "conf"}

    def packages(folder: Path, name: str) -> set[str]:
        found = {name} if (folder / "__init__.py").is_file() else set()
        for child in folder.iterdir():
            if child.is_dir() and child.name != "__pycache__":
                found |= packages(child, f"{name}.{child.name}")
        return found

    on_disk = (
        packages(ROOT / "sparsegap", "sparsegap")
        | packages(ROOT / "conf", "sparsegap.conf")
        | packages(ROOT / "hydra_plugins", "hydra_plugins")
    )
    assert set(setuptools["packages"]) == on_disk


def test_core_modules_import_without_extras(tmp_path):
    """The entry points and the training loop import none of the optional packages at module
    level (they are imported where an option needs them)."""
    code = (
        "import sparsegap.__main__, sparsegap.report.__main__, sparsegap.autointerp.__main__,"
        " sparsegap.train, sparsegap.checkpoint, sparsegap.report.figures"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=_blocking(tmp_path, OPTIONAL_MODULES),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "args", "extra", "wanted_by"),
    [
        ("sparsegap", ["data=lm"], "lm", "data=lm"),
        ("sparsegap", ["encoder=sklearn_dl", "steps=20"], "sklearn", "encoder=sklearn_dl"),
        ("sparsegap.autointerp", ["run=nowhere"], "autointerp", "sparsegap.autointerp"),
    ],
)
def test_missing_extra_is_one_error_line(tmp_path, module, args, extra, wanted_by):
    done = subprocess.run(
        [sys.executable, "-m", module, *args, "logger=none"],
        cwd=tmp_path,
        env=_blocking(tmp_path, list(EXTRAS[extra])),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        f"error: {wanted_by} needs the optional dependencies of sparsegap[{extra}]"
        f" ({', '.join(EXTRAS[extra])} not installed): pip install 'sparsegap[{extra}]'"
    ]
    assert not (tmp_path / "outputs" / "runs").exists() or not any(
        (tmp_path / "outputs" / "runs").rglob("model.pt")
    )


def _wheel(tmp_path: Path) -> Path:
    """``pip wheel`` of a copy of the source tree (the build writes build/ and *.egg-info next
    to its sources). Without build isolation when this environment's setuptools can build it,
    so the test needs no index."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("conf", "hydra_plugins", "sparsegap"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    try:
        setuptools = int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        setuptools = 0
    isolation = ["--no-build-isolation"] if setuptools >= 77 else []
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation,
         "-w", str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("sparsegap-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_runs_from_any_folder(tmp_path):
    """The acceptance check of the package: a wheel installed into a fresh venv outside the
    repository trains, sweeps and reports from an unrelated folder with no optional extra."""
    import zipfile

    wheel = _wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.removeprefix("sparsegap/conf/") for n in names if n.startswith("sparsegap/conf/")}
    assert {str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*.yaml")} <= shipped

    # A fresh venv whose dependencies (torch & co.) come from this environment through a .pth
    # path entry, so nothing is downloaded; this environment's own sparsegap (editable or not) is
    # shadowed by the wheel's, which sits earlier on the path.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    paths = dict.fromkeys(p for p in sys.path if Path(p).name in ("site-packages", "dist-packages"))
    (Path(site) / "dependencies.pth").write_text("\n".join(paths) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-index", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _blocking(tmp_path, OPTIONAL_MODULES)
    env.pop("PYTHONPATH")
    env["PYTHONPATH"] = str(tmp_path / "block")  # the blocker only: not this checkout

    def run(*command: str) -> str:
        done = subprocess.run(
            [str(venv / "bin" / command[0]), *command[1:]],
            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, f"{command}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    where = run("python", "-c", "import sparsegap; print(sparsegap.__file__)").strip()
    assert Path(where).is_relative_to(site), where

    job = run("sparsegap", "--cfg", "job")
    assert "scenario:" in job and "encoder:" in job

    run("sparsegap", "steps=200")
    (single,) = (elsewhere / "outputs" / "runs").iterdir()
    assert read_summary(single)["final"]["step"] == 200

    run("sparsegap", "-m", "data.K=3,5", "steps=200")
    (sweep,) = (elsewhere / "outputs" / "multirun").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if (p / "summary.json").is_file())
    assert [read_summary(j)["config"]["data"]["K"] for j in jobs] == [3, 5]

    run("sparsegap-report", str(sweep))
    assert (sweep / "report" / "results.csv").is_file()
    assert "| unknown |" in (sweep / "report" / "summary.md").read_text()
