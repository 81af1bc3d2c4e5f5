"""The C accelerators: optional, so a machine without a C compiler (or without Python's headers)
still installs kmltrace and runs the pure polars/numpy path, which is also the reference the
accelerators are tested against (tests/formats/test_accel_equivalence.py and siblings)."""

from setuptools import Extension, setup

ACCELERATORS: list[Extension] = [
    # one text trace line -> header columns and the hot tracepoints' fields (issue 2)
    Extension("kmltrace.formats._textscan", ["src/kmltrace/formats/_textscan.c"],
              optional=True, extra_compile_args=["-O2", "-Wall"]),
    # ring-buffer pages -> records, the CPUs' merge, byte-block gathers (issue 3)
    Extension("kmltrace.formats._ringscan", ["src/kmltrace/formats/_ringscan.c"],
              optional=True, extra_compile_args=["-O2"]),
]

setup(ext_modules=ACCELERATORS)
