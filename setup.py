# Thin shim: setuptools reads everything from pyproject.toml; this only hooks in
# the cffi out-of-line build of the C fast path (vxlanpy/_build_native.py).
from setuptools import setup

setup(cffi_modules=["vxlanpy/_build_native.py:ffibuilder"])
