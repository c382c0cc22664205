"""Is a Coral EdgeTPU attached? Answered from sysfs and /dev alone, without opening the device.

Opening the device is libedgetpu's job, and only one process may hold a USB Accelerator; a probe
that opened it could steal it from a running interpreter. Reading vendor/product IDs and device
nodes is harmless and takes microseconds, so it can run at startup and in health reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SYSFS_ROOT = Path("/sys")
DEV_ROOT = Path("/dev")

# A USB Accelerator enumerates as Global Unichip until libedgetpu uploads its firmware on first
# use, then re-enumerates as Google: both IDs mean "a Coral is plugged in".
USB_IDS: dict[tuple[str, str], str] = {
    ("1a6e", "089a"): "Global Unichip, firmware not loaded yet",
    ("18d1", "9302"): "Google, firmware loaded",
}
NOT_FOUND = "no EdgeTPU found (no USB 1a6e:089a/18d1:9302, no /dev/apex_*)"


@dataclass(frozen=True)
class EdgeTpuProbe:
    present: bool
    devices: list[str]  # "usb:<sysfs bus path> <vid>:<pid>" or "pci:/dev/apex_N"
    description: str
    temperatures_c: dict[str, float] = field(default_factory=dict)  # by /dev/apex_N, PCIe/M.2 only


def _read_id(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip().lower()
    except (OSError, UnicodeDecodeError):
        return None


def usb_devices(sysfs_root: Path = SYSFS_ROOT) -> list[str]:
    """Coral USB Accelerators by sysfs bus path, e.g. `usb:1-1.2 18d1:9302 (Google, firmware loaded)`."""
    found = []
    for device in sorted((sysfs_root / "bus" / "usb" / "devices").glob("*")):
        vendor, product = _read_id(device / "idVendor"), _read_id(device / "idProduct")
        if vendor is None or product is None:
            continue  # interfaces (1-1:1.0) have no IDs of their own
        label = USB_IDS.get((vendor, product))
        if label is not None:
            found.append(f"usb:{device.name} {vendor}:{product} ({label})")
    return found


def apex_nodes(dev_root: Path = DEV_ROOT) -> list[Path]:
    """PCIe/M.2 EdgeTPUs: the gasket/apex driver creates /dev/apex_0, /dev/apex_1, ..."""
    return sorted(dev_root.glob("apex_*"))


def apex_temperature_c(name: str, sysfs_root: Path = SYSFS_ROOT) -> float | None:
    """The apex driver reports the die temperature in millidegrees Celsius; None when it does not."""
    try:
        text = (sysfs_root / "class" / "apex" / name / "temp").read_text(encoding="ascii").strip()
        return int(text) / 1000.0
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def read_edgetpu_temp_c(sysfs_root: Path = SYSFS_ROOT, dev_root: Path = DEV_ROOT) -> float | None:
    """The first PCIe/M.2 Coral's temperature (the USB Accelerator reports none)."""
    for node in apex_nodes(dev_root):
        temperature_c = apex_temperature_c(node.name, sysfs_root)
        if temperature_c is not None:
            return round(temperature_c, 1)
    return None


def _pci_label(node: Path, temperature_c: float | None) -> str:
    return f"pci:{node}" + (f" ({temperature_c:.1f}°C)" if temperature_c is not None else "")


def _device_kind(device: str) -> str:
    """`usb`, `pci` or `any` from a libedgetpu device string (usb, usb:0, pci, pci:1, :0, "")."""
    kind = device.split(":", 1)[0]
    return kind if kind in ("usb", "pci") else "any"


def _device_index(device: str) -> int:
    _, _, index = device.partition(":")
    return int(index) if index.isdigit() else 0


def probe_edgetpu(device: str = "", sysfs_root: Path = SYSFS_ROOT, dev_root: Path = DEV_ROOT) -> EdgeTpuProbe:
    """Which EdgeTPUs the configured `device` (model.edgetpu_device) could mean; never opens one."""
    nodes = apex_nodes(dev_root)
    temperatures = {
        str(node): temp for node in nodes if (temp := apex_temperature_c(node.name, sysfs_root)) is not None
    }
    usb = usb_devices(sysfs_root)
    pci = [_pci_label(node, temperatures.get(str(node))) for node in nodes]
    kind = _device_kind(device)
    matching = {"usb": usb, "pci": pci}.get(kind, usb + pci)
    # libedgetpu numbers devices per kind (usb:1 is the second USB one), or overall for ":N".
    present = len(matching) > _device_index(device)
    if present:
        description = f"EdgeTPU found: {', '.join(matching)}"
    elif not usb and not pci:
        description = NOT_FOUND
    else:
        wanted = {"usb": "USB EdgeTPU", "pci": "PCIe EdgeTPU"}.get(kind, "EdgeTPU")
        description = f"no {wanted} '{device}' found; present: {', '.join(usb + pci)} (see model.edgetpu_device)"
    return EdgeTpuProbe(present, usb + pci, description, temperatures)
