"""Bundled data sets (files beside this module) and the scripts that generate them."""

import pathlib

DOCTORS = pathlib.Path(__file__).resolve().parent / "doctors"


def bundled_doctors() -> list[str]:
    """Names of the trained doctors that ship in the package (datasets/doctors/<name>/doctor.json)."""
    return sorted(p.name for p in DOCTORS.iterdir() if (p / "doctor.json").is_file()) if DOCTORS.is_dir() else []


def bundled_doctor(name: str) -> pathlib.Path:
    """The folder of the bundled doctor `name` (load it with llmdoctor.doctor.load_doctor(path, patient=...))."""
    path = DOCTORS / name
    if not (path / "doctor.json").is_file():
        raise ValueError(f"no bundled doctor {name!r} (bundled: {', '.join(bundled_doctors()) or 'none'})")
    return path
