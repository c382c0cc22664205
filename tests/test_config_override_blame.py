"""A --set that makes a whole section invalid (a check across keys) is named as the cause, not the
config file's line of that section, which a user would then look at in vain."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgepose.config import load_config
from edgepose.errors import ConfigError


def _problems(path: Path, overrides: tuple[str, ...]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return list(info.value.problems)


def test_a_section_check_broken_by_a_set_names_the_set(tmp_path: Path) -> None:
    path = tmp_path / "edgepose.yaml"
    path.write_text("web:\n  listen: 127.0.0.1:8080\n")
    (problem,) = _problems(path, ("web.listen=0.0.0.0:8099",))
    assert problem.startswith(f"--set web.listen=0.0.0.0:8099 (with {path}:1): web: "), problem
    assert "password" in problem


def test_a_section_check_broken_by_the_file_still_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "edgepose.yaml"
    path.write_text("web:\n  listen: 0.0.0.0:8099\n")
    (problem,) = _problems(path, ("mqtt.port=1884",))
    assert problem.startswith(f"{path}:1: web: "), problem
