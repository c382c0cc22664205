"""The bundle machinery of parts.py with small stand-in parts: build order, close order, reuse,
`needs`, handovers and failures, without a model or a broker."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from edgepose.config import Config
from edgepose.errors import SourceError
from edgepose.mqtt.payloads import HealthReport
from edgepose.parts import PartSpec, ReloadFailed, build_bundle, changed_parts, rebuild


class NoHost:
    def health_report(self) -> HealthReport:
        raise AssertionError("not used")

    def request_reload(self) -> None:
        pass

    def request_stop(self, reason: str) -> None:
        pass


class Journal:
    """Records what the stand-in parts do, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.fail: set[str] = set()

    def spec(self, name: str, key: Any, needs: tuple[str, ...] = (), handover: bool = False) -> PartSpec:
        def build(config: Config, parts: Mapping[str, object], host: Any) -> contextlib.AbstractContextManager[object]:
            label = f"{name}({key(config)})"
            if name in self.fail:
                raise SourceError(f"{name} cannot be built")

            @contextlib.contextmanager
            def part() -> Iterator[str]:
                self.events.append(f"open {label} with {sorted(parts)}")
                try:
                    yield label
                finally:
                    self.events.append(f"close {label}")

            return part()

        def lend(old: object, old_config: Config, new_config: Config) -> contextlib.AbstractContextManager[None]:
            @contextlib.contextmanager
            def lent() -> Iterator[None]:
                self.events.append(f"lend {old}")
                try:
                    yield
                except BaseException:
                    self.events.append(f"give back {old}")
                    raise

            return lent()

        return PartSpec(name, key=key, needs=needs, build=build, handover=lend if handover else None)


def config(threshold: float = 0.2, width: int = 640, port: int = 1883) -> Config:
    return Config.model_validate(
        {
            "device_id": "parts",
            "model": {"score_threshold": threshold},
            "camera": {"width": width},
            "mqtt": {"port": port},
        }
    )


@pytest.fixture
def journal() -> Journal:
    return Journal()


def specs(journal: Journal) -> tuple[PartSpec, ...]:
    return (
        journal.spec("model", lambda c: c.model.score_threshold, handover=True),
        journal.spec("source", lambda c: c.camera.width, handover=True),
        journal.spec("publisher", lambda c: c.mqtt.port),
        journal.spec("commands", lambda c: c.device_id, needs=("publisher",)),
    )


def test_built_in_order_closed_in_reverse_once(journal: Journal) -> None:
    bundle = build_bundle(config(), NoHost(), specs(journal))
    bundle.close()
    bundle.close()
    assert journal.events == [
        "open model(0.2) with []",
        "open source(640) with ['model']",
        "open publisher(1883) with ['model', 'source']",
        "open commands(parts) with ['model', 'publisher', 'source']",
        "close commands(parts)",
        "close publisher(1883)",
        "close source(640)",
        "close model(0.2)",
    ]


def test_a_failure_while_building_closes_what_was_built(journal: Journal) -> None:
    journal.fail = {"publisher"}
    with pytest.raises(SourceError):
        build_bundle(config(), NoHost(), specs(journal))
    assert journal.events == [
        "open model(0.2) with []",
        "open source(640) with ['model']",
        "close source(640)",
        "close model(0.2)",
    ]


def test_reload_rebuilds_what_changed_and_what_needs_it(journal: Journal) -> None:
    old = build_bundle(config(), NoHost(), specs(journal))
    new_config = config(port=1884)
    assert changed_parts(old, new_config) == ["publisher", "commands"]
    journal.events.clear()
    new = rebuild(old, new_config, NoHost())
    assert new.part("model", str) is old.part("model", str)
    assert journal.events == [
        "open publisher(1884) with ['model', 'source']",
        "open commands(parts) with ['model', 'publisher', 'source']",
    ]
    journal.events.clear()
    old.close_replaced(new)
    assert journal.events == ["close commands(parts)", "close publisher(1883)"]
    journal.events.clear()
    new.close()
    assert journal.events == [
        "close commands(parts)",
        "close publisher(1884)",
        "close source(640)",
        "close model(0.2)",
    ]


def test_a_failed_reload_closes_the_new_parts_gives_devices_back_and_leaves_the_old_whole(
    journal: Journal,
) -> None:
    old = build_bundle(config(), NoHost(), specs(journal))
    journal.events.clear()
    journal.fail = {"source"}
    with pytest.raises(ReloadFailed) as info:
        rebuild(old, config(threshold=0.3, width=320), NoHost())
    assert info.value.problems == ["source: source cannot be built"]
    assert journal.events == [
        "lend model(0.2)",
        "open model(0.3) with []",
        "lend source(640)",
        "close model(0.3)",  # what was built closes first, then the devices go back
        "give back source(640)",
        "give back model(0.2)",
    ]
    journal.events.clear()
    old.close()
    assert [e for e in journal.events if e.startswith("close")] == [
        "close commands(parts)",
        "close publisher(1883)",
        "close source(640)",
        "close model(0.2)",
    ]


def test_a_bug_in_a_part_is_a_failed_reload_not_a_crash(journal: Journal) -> None:
    old = build_bundle(config(), NoHost(), specs(journal))

    def broken(config: Config, parts: Mapping[str, object], host: Any) -> contextlib.AbstractContextManager[object]:
        raise KeyError("oops")

    buggy = (*old.specs[:2], PartSpec("publisher", key=lambda c: c.mqtt.port, needs=(), build=broken), old.specs[3])
    old.specs = buggy
    with pytest.raises(ReloadFailed, match="publisher: internal error: KeyError"):
        rebuild(old, config(port=1884), NoHost())
    old.close()
