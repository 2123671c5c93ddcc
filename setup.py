"""Builds the compiled core: the C engine in csrc/ and its Cython bridge."""

from Cython.Build import cythonize
from setuptools import Extension, setup

core = Extension(
    "udp_reader._core",
    sources=["src/udp_reader/_core.pyx", "csrc/engine.c"],
    include_dirs=["csrc"],
    depends=["csrc/engine.h", "src/udp_reader/engine.pxd"],
    extra_compile_args=["-O3", "-Wall", "-Wno-unused-function"],
)

setup(ext_modules=cythonize([core], compiler_directives={"language_level": "3"}))
