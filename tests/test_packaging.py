"""The install owns one top-level name: the wheel puts everything under ``svformer_deploy``.

The repository keeps its folders ``svformer/``, ``export/``, ``deploy/`` and ``simulators/``; they
install as ``svformer_deploy.svformer`` etc. A user's stray ``export.py`` or ``deploy.py`` (common
file names in ML projects) must not shadow them, and nothing generic may land in site-packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

FOLDERS = ("svformer", "export", "deploy", "simulators")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    src = tmp_path_factory.mktemp("source")  # setuptools builds in the source tree: use a copy
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (whl,) = out.glob("svformer_deploy-*.whl")
    return whl


def test_wheel_holds_only_the_svformer_deploy_namespace_and_every_package_folder(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"svformer_deploy"}, top
    for folder in FOLDERS:  # every package folder of the repository is in the wheel
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.relative_to(REPO).as_posix()
            assert f"svformer_deploy/{rel}" in names, f"{rel} is missing from the wheel (pyproject packages list)"


@pytest.mark.slow
def test_installed_wheel_imports_from_a_folder_with_stray_export_and_deploy_modules(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    # the dependencies (torch, click, ...) come from this test environment's site-packages; a path
    # line in a .pth file does not run that folder's own .pth files, so its editable install stays off
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "project"
    work.mkdir()
    for name in FOLDERS:
        (work / f"{name}.py").write_text(f"raise ImportError('the stray {name}.py was imported')\n")
    code = ("import svformer_deploy.export.ir as a, svformer_deploy.deploy.cli as b, "
            "svformer_deploy.simulators.executor as c, svformer_deploy.svformer.model as d\n"
            "print('\\n'.join(m.__file__ for m in (a, b, c, d)))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(py), "-c", code], cwd=work, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    files = [Path(p) for p in proc.stdout.split()]
    assert len(files) == 4 and all(site in f.parents for f in files), files
    info = subprocess.run([str(venv / "bin" / "svformer-deploy"), "info", "--arch", "3stg", "--json"], cwd=work,
                          capture_output=True, text=True, timeout=300, env=env)
    assert info.returncode == 0, info.stderr
    assert '"params": 1879974' in info.stdout
