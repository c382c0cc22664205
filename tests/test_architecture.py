"""The shape of the code, checked from its syntax trees: which way imports point, where
`camera.source` strings are parsed, and that no library's private attributes are read."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "edgepose"
SOURCE_PREFIXES = {"file:", "images:", "v4l2:", "usb:", "synthetic:"}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_inference_imports_neither_health_nor_daemon() -> None:
    upward = {
        path.name: sorted(m for m in _imports(path) if m.startswith(("edgepose.health", "edgepose.daemon")))
        for path in sorted((PACKAGE / "inference").glob("*.py"))
    }
    assert {name: modules for name, modules in upward.items() if modules} == {}


def test_health_reads_no_hardware() -> None:
    """Health assembles values; the hardware readers live in system.py and inference/edgetpu.py."""
    hardware = ("psutil", "os", "pathlib", "edgepose.system", "edgepose.inference")
    assert sorted(m for m in _imports(PACKAGE / "health.py") if m.startswith(hardware)) == []


def _source_string_parsing(code: str, name: str) -> list[str]:
    """Places that take a camera.source string apart or compare it with a literal."""
    found = []
    splitting = ("startswith", "removeprefix", "partition", "split")
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in splitting:
            constants = [c.value for arg in node.args for c in ast.walk(arg) if isinstance(c, ast.Constant)]
            receiver = ast.unparse(node.func.value).lower()
            if any(
                isinstance(c, str) and (c in SOURCE_PREFIXES or (c == ":" and "source" in receiver)) for c in constants
            ):
                found.append(f"{name}:{node.lineno}")
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            names_source = any(isinstance(s, ast.Attribute) and s.attr == "source" for s in sides)
            if names_source and any(isinstance(s, ast.Constant) and isinstance(s.value, str) for s in sides):
                found.append(f"{name}:{node.lineno}")
    return found


def test_the_source_parsing_check_finds_string_parsing() -> None:
    code = """
mode = "stills" if config.camera.source.startswith("images:") else "video"
if config.camera.source == "demo":
    pass
kind, _, value = config.camera.source.partition(":")
"""
    assert sorted(_source_string_parsing(code, "bad.py")) == ["bad.py:2", "bad.py:3", "bad.py:5"]


def test_camera_source_strings_are_parsed_in_config_only() -> None:
    parsing = {
        str(path.relative_to(PACKAGE)): _source_string_parsing(path.read_text(encoding="utf-8"), path.name)
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "config.py"
    }
    assert {name: places for name, places in parsing.items() if places} == {}


def test_no_private_attributes_of_paho() -> None:
    private = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Constant) and node.value in ("_out_packet", "_out_messages"):
                private.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                if isinstance(owner, ast.Attribute) and owner.attr == "_client":
                    private.append(f"{path.name}:{node.lineno} _client.{node.attr}")
    assert private == []


def test_only_the_factory_dispatches_on_the_source_type() -> None:
    """Outside config.py (which defines the variants), only sources/factory.py builds from them."""
    variants = {"SourceKind", "AutoSpec", "Picamera2Spec", "V4l2Spec", "UsbSpec", "FileSpec", "ImagesSpec"}
    variants |= {"DemoSpec", "SyntheticSpec"}
    naming = {
        str(path.relative_to(PACKAGE)): sorted(
            node.id for node in ast.walk(_tree(path)) if isinstance(node, ast.Name) and node.id in variants
        )
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "config.py"
    }
    naming = {name: found for name, found in naming.items() if found}
    # doctor.py diagnoses the configured camera by asking the variant (may_use_picamera2, v4l2_node).
    assert sorted(naming) == ["sources/factory.py"], naming
