"""Bundled data sets (files beside this module) and the scripts that generate them. The bundled doctors
(datasets/doctors/) are found by fastdoctor.doctors, which the core's loader needs."""

from ..doctors import BUNDLED as DOCTORS, bundled_doctor, bundled_doctors

__all__ = ["DOCTORS", "bundled_doctor", "bundled_doctors"]
