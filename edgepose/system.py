"""Readings of the machine the daemon runs on: its own CPU and memory, the load, the SoC temperature.

Hardware and OS access only; health.py turns these plain values into the report.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil

THERMAL_ROOT = Path("/sys/class/thermal")


def read_cpu_temp_c(thermal_root: Path = THERMAL_ROOT) -> float | None:
    """SoC temperature: the Pi exposes it as thermal_zone0 in millidegrees."""
    for zone in sorted(thermal_root.glob("thermal_zone*/temp")):
        try:
            return round(int(zone.read_text().strip()) / 1000.0, 1)
        except (OSError, ValueError):
            continue
    return None


class SystemReader:
    def __init__(self) -> None:
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call primes the measurement interval

    def read(self) -> dict[str, float | None]:
        try:
            load1: float | None = round(os.getloadavg()[0], 2)
        except OSError:
            load1 = None
        return {
            "cpu_percent": round(self._process.cpu_percent(None), 1),
            "memory_rss_mb": round(self._process.memory_info().rss / 1e6, 1),
            "load1": load1,
            "cpu_temp_c": read_cpu_temp_c(),
        }
