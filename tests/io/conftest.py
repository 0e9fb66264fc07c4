"""Fixtures that build bad DICOM series from the real one in ../shared/data/ct_abdomen/dicom.

The real slices are JPEG 2000 Lossless, explicit VR little endian. Tags are rewritten in the
file bytes (no pydicom, no re-encoding), so the pixel data of every copied slice stays exactly
what GDCM decodes from the original.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
SHORT_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
             b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}


def set_dicom_element(data: bytes, group: int, element: int, value: str) -> bytes:
    """Replace the value of a top-level short-VR element (explicit VR little endian) in ``data``.

    The element must already be present (possibly empty) before the pixel data; the value is
    padded to an even length (NUL for UI, space otherwise) as the standard requires.
    """
    tag = struct.pack("<HH", group, element)
    pixel = data.find(PIXEL_DATA_TAG)
    at = data.find(tag)
    if at < 0 or (0 <= pixel < at):
        raise ValueError(f"element ({group:04x},{element:04x}) not found before the pixel data")
    vr = data[at + 4: at + 6]
    if vr not in SHORT_VRS:
        raise ValueError(f"element ({group:04x},{element:04x}) has VR {vr!r}, not a short VR")
    old_len = struct.unpack("<H", data[at + 6: at + 8])[0]
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\0" if vr == b"UI" else b" "
    return data[:at + 6] + struct.pack("<H", len(raw)) + raw + data[at + 8 + old_len:]


def get_dicom_element(data: bytes, group: int, element: int) -> str:
    tag = struct.pack("<HH", group, element)
    at = data.find(tag)
    length = struct.unpack("<H", data[at + 6: at + 8])[0]
    return data[at + 8: at + 8 + length].decode("ascii").rstrip("\0 ")


@pytest.fixture(scope="session")
def real_dicom(shared_data) -> Path:
    return shared_data / "ct_abdomen" / "dicom"


@pytest.fixture(scope="session")
def dicom_slices(real_dicom) -> list[Path]:
    return sorted(p for p in real_dicom.iterdir() if p.is_file())


@pytest.fixture(scope="session")
def multi_series_dir(tmp_path_factory, dicom_slices) -> tuple[Path, dict[str, str]]:
    """One folder holding the real series twice, under two SeriesInstanceUIDs and descriptions."""
    folder = tmp_path_factory.mktemp("multi_series") / "study"
    folder.mkdir()
    series = {"1.2.826.0.1.3680043.8.498.101": "arterial phase", "1.2.826.0.1.3680043.8.498.202": "venous phase"}
    for n, (uid, description) in enumerate(series.items()):
        for i, src in enumerate(dicom_slices):
            data = set_dicom_element(src.read_bytes(), 0x0020, 0x000E, uid)
            data = set_dicom_element(data, 0x0008, 0x103E, description)
            data = set_dicom_element(data, 0x0008, 0x0018, f"{uid}.{i + 1}")
            (folder / f"s{n}_{i:03d}.dcm").write_bytes(data)
    return folder, series


@pytest.fixture()
def missing_slice_dir(tmp_path, real_dicom, dicom_slices) -> Path:
    """A copy of the real series with one middle slice deleted."""
    folder = tmp_path / "missing_slice"
    shutil.copytree(real_dicom, folder)
    (folder / dicom_slices[len(dicom_slices) // 2].name).unlink()
    return folder


@pytest.fixture()
def uneven_dir(tmp_path, real_dicom, dicom_slices) -> Path:
    """A copy of the real series where one middle slice sits 0.8 mm off its place."""
    folder = tmp_path / "uneven"
    shutil.copytree(real_dicom, folder)
    target = folder / dicom_slices[len(dicom_slices) // 2].name
    data = target.read_bytes()
    x, y, z = (float(v) for v in get_dicom_element(data, 0x0020, 0x0032).split("\\"))
    target.chmod(0o644)
    target.write_bytes(set_dicom_element(data, 0x0020, 0x0032, f"{x:.8g}\\{y:.8g}\\{z + 0.8:.8g}"))
    return folder
