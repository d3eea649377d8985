"""The package installs the way Python users install: `pip install .` into a fresh venv gives
an importable `siqa` with its version and its config schema, and requirements.txt pins one
version inside each range of pyproject.toml (one place to change a version)."""
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

import siqa
from siqa import config

ROOT = Path(__file__).resolve().parent.parent
PYTHONS = ("3.10", "3.11", "3.12", "3.13")


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement_lines(path):
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def applies(req, python):
    return req.marker is None or req.marker.evaluate({"python_version": python,
                                                      "python_full_version": python + ".0"})


def ranges(reqs, python):
    return {canonicalize_name(r.name): r.specifier for r in reqs if applies(r, python)}


@pytest.mark.parametrize("python", PYTHONS)
def test_requirements_pin_one_version_inside_each_pyproject_range(python):
    project = pyproject()
    assert python + ".0" in SpecifierSet(project["requires-python"])
    runtime = ranges(map(Requirement, project["dependencies"]), python)
    test = ranges(map(Requirement, project["optional-dependencies"]["test"]), python)
    onnx = ranges(map(Requirement, project["optional-dependencies"]["onnx"]), python)
    pins = {}
    for req in requirement_lines(ROOT / "requirements.txt"):
        if applies(req, python):
            name = canonicalize_name(req.name)
            assert name not in pins, f"{name} pinned twice for Python {python}"
            (spec,) = req.specifier  # exactly one clause, and it is ==
            assert spec.operator == "==", f"{req}: requirements.txt holds exact pins"
            pins[name] = spec.version
    # The pinned set is the runtime dependencies plus the test extra (plus onnx if pinned).
    assert set(runtime) | set(test) <= set(pins), "a dependency of pyproject.toml has no pin"
    assert set(pins) <= set(runtime) | set(test) | set(onnx), "a pin has no range in pyproject.toml"
    allowed = {**onnx, **test, **runtime}
    outside = {name: version for name, version in pins.items() if version not in allowed[name]}
    assert not outside, f"pins outside the pyproject.toml range for Python {python}: {outside}"


def test_files_only_packages_stay_out_of_the_dependencies():
    """stereodemo and dtcwt are installed without their dependencies (requirements-nodeps.txt):
    as a dependency of the package, pip would install them with theirs."""
    nodeps = {canonicalize_name(r.name) for r in requirement_lines(ROOT / "requirements-nodeps.txt")}
    assert {"stereodemo", "dtcwt"} <= nodeps
    project = pyproject()
    declared = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    pinned = requirement_lines(ROOT / "requirements.txt")
    assert not nodeps & {canonicalize_name(Requirement(r).name) for r in declared}
    assert not nodeps & {canonicalize_name(r.name) for r in pinned}


def copy_source(dest):
    """What a clone holds for the build (the checkout itself stays untouched: an in-tree build
    writes build/ and *.egg-info/ next to the sources)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "siqa", dest / "siqa", symlinks=True, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "config.yaml"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def fresh_venv(folder):
    """A venv without pip whose own site-packages comes first, then this environment's (for
    torch and the other dependencies: the install itself uses --no-deps)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "current_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def pip_install(python, *args):
    """`pip install --no-deps` into the venv of `python`, with this environment's pip. Without
    build isolation when setuptools is here (no download, a few seconds)."""
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                           "--disable-pip-version-check", "--no-deps", *isolation, *args],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


PROBE = """
import importlib.metadata, json, siqa
from siqa import config
print(json.dumps({"version": siqa.__version__, "metadata": importlib.metadata.version("siqa"),
                  "file": siqa.__file__, "config": config.load_config(),
                  "requires": importlib.metadata.requires("siqa")}))
"""


def probe(python, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([str(python), "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_pip_install_dot_gives_an_importable_package_with_version_and_config(tmp_path):
    src = copy_source(tmp_path / "src")
    python = fresh_venv(tmp_path / "venv")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip_install(python, str(src))

    found = probe(python, elsewhere)
    package = Path(found["file"]).resolve().parent
    assert package.is_relative_to((tmp_path / "venv").resolve()), found["file"]
    assert found["version"] == found["metadata"] == siqa.__version__
    # The settings are declared in the package (siqa/settings.py): the installed defaults are
    # the checkout's, without its config.yaml.
    assert found["config"] == config.load_config()
    # Every module of the checkout is installed (subpackages included).
    modules = {p.relative_to(ROOT / "siqa") for p in (ROOT / "siqa").rglob("*.py")}
    assert modules == {p.relative_to(package) for p in package.rglob("*.py")}
    # The metadata declares the dependencies and the extras of pyproject.toml.
    declared = {canonicalize_name(Requirement(r).name) for r in found["requires"]}
    project = pyproject()
    wanted = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    assert declared == {canonicalize_name(Requirement(r).name) for r in wanted}


def test_editable_install_imports_the_sources(tmp_path):
    src = copy_source(tmp_path / "src")
    python = fresh_venv(tmp_path / "venv")
    pip_install(python, "-e", str(src))

    found = probe(python, tmp_path)
    assert Path(found["file"]).resolve() == (src / "siqa" / "__init__.py").resolve()
    assert found["version"] == found["metadata"] == siqa.__version__
    assert found["config"] == config.load_config()


def test_the_setup_sh_venv_imports_the_checkout_from_anywhere(tmp_path):
    """setup.sh installs the package into .venv (editable): `import siqa` works from any
    folder, without PYTHONPATH, and is this checkout's siqa."""
    venv_python = ROOT / ".venv" / "bin" / "python"
    if not venv_python.is_file() or Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("not run with the .venv that setup.sh makes")
    found = probe(venv_python, tmp_path)
    assert Path(found["file"]).resolve() == (ROOT / "siqa" / "__init__.py").resolve()
