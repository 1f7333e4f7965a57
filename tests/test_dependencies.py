"""pyproject.toml's dependency ranges hold for the environment the tests run in."""

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _requirements(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]


def test_installed_versions_satisfy_pyproject():
    outside = []
    for req in [*_requirements(), *_requirements("dev")]:
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            outside.append(f"{req.name}: not installed")
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            outside.append(f"{req.name} {version} not in {req.specifier}")
    assert not outside, outside


def test_every_dependency_has_a_floor():
    for req in [*_requirements(), *_requirements("dev")]:
        assert any(spec.operator in (">=", "==") for spec in req.specifier), f"{req.name} has no lower bound"
