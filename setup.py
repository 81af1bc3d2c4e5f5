"""The C accelerators: optional, so a machine without a C compiler (or without Python's headers)
still installs kmltrace and runs the pure polars/numpy path, which is also the reference the
accelerators are tested against (tests/formats/test_accel_equivalence.py and siblings)."""

from setuptools import Extension, setup

ACCELERATORS: list[Extension] = [
]

setup(ext_modules=ACCELERATORS)
