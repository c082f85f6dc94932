"""requirements.lock against pyproject.toml, and against the environment the tests run in.

`make lock` compiles the lock from pyproject.toml's dependencies and every extra; `make setup`,
CI and the Dockerfile install from it. These checks read files and installed metadata only.
"""

import re
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# What the lock is compiled for (the Makefile's LOCK_TARGET): these machines, CI and the image.
TARGET = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux"}


def pins() -> dict[str, str]:
    """{canonical name: version} of every `name==version` line of the lock."""
    found = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", LOCK.read_text(), re.M)
    return {canonicalize_name(name): version for name, version in found}


def declared() -> list[Requirement]:
    """pyproject's dependencies and every optional extra's."""
    lists = [PYPROJECT["dependencies"], *PYPROJECT["optional-dependencies"].values()]
    return [Requirement(text) for group in lists for text in group]


def test_the_lock_is_compiled_from_every_extra_for_the_target():
    header = LOCK.read_text().split("\n", 2)[1]
    assert header.startswith("#    uv pip compile") and "pyproject.toml" in header, header
    extras = set(re.findall(r"--extra (\S+)", header))
    assert extras == set(PYPROJECT["optional-dependencies"]), f"{header}: run `make lock`"
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^LOCK_TARGET := (.+)$", makefile, re.M).group(1)
    assert target in header, f"{header} is not for the Makefile's {target}: run `make lock`"


def test_every_dependency_is_locked_within_its_bounds():
    locked = pins()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is in pyproject.toml but not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"requirements.lock pins {name}=={locked[name]}, outside pyproject.toml's {requirement}: run `make lock`"
        )


def test_every_extra_a_dependency_asks_for_is_locked():
    """ray[default,train], psycopg[binary]: what those extras add is in the lock too."""
    locked = pins()
    for requirement in (r for r in declared() if r.extras):
        for extra in requirement.extras:
            environment = {**default_environment(), **TARGET, "extra": extra}
            for needed in map(Requirement, metadata.requires(requirement.name) or []):
                if needed.marker and needed.marker.evaluate(environment) and "extra" in str(needed.marker):
                    assert canonicalize_name(needed.name) in locked, f"{requirement}: {needed.name} is not locked"


def test_the_lock_names_no_direct_dependency_pyproject_dropped():
    text = LOCK.read_text()
    direct = {
        canonicalize_name(name)
        for name, via in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==\S+\n((?:    #.*\n)+)", text, re.M)
        if "orch (pyproject.toml)" in via
    }
    named = {canonicalize_name(r.name) for r in declared()}
    assert direct <= named, (
        f"requirements.lock has {sorted(direct - named)} via pyproject.toml, which has not: run `make lock`"
    )
    assert named <= direct, f"{sorted(named - direct)} are not locked as pyproject.toml's own: run `make lock`"


def test_the_tests_run_on_the_locked_versions():
    """The environment these tests run in is the one `make setup` installs from the lock."""
    drift = []
    for name, version in pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            drift.append(f"{name} {installed or 'missing'} (locked {version})")
    assert not drift, f"not the locked versions: {', '.join(drift)}; run `make setup`"
