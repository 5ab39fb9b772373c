# Thin shim: setuptools reads everything from pyproject.toml; this only hooks in
# the cffi out-of-line build of vxlanpy/_fastpath.c.
from setuptools import setup

setup(cffi_modules=["vxlanpy/_build_fastpath.py:ffibuilder"])
