"""The C accelerators: optional, so a machine without a C compiler (or without Python's headers)
still installs kmltrace and runs the pure polars/numpy path, which is also the reference the
accelerators are tested against (tests/formats/test_text_scan.py, test_ringscan.py)."""

from setuptools import Extension, setup

FORMATS = "src/kmltrace/formats"
COMMON = dict(optional=True, extra_compile_args=["-O2", "-Wall"],
              depends=[f"{FORMATS}/arrow_c.h"])

ACCELERATORS: list[Extension] = [
    # one text trace line -> header columns and the hot tracepoints' fields (issue 2)
    Extension("kmltrace.formats._textscan", [f"{FORMATS}/_textscan.c"], **COMMON),
    # ring-buffer pages -> records, the CPUs' merge, byte-block gathers (issue 3)
    Extension("kmltrace.formats._ringscan", [f"{FORMATS}/_ringscan.c"], **COMMON),
]

setup(ext_modules=ACCELERATORS)
