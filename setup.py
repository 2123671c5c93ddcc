"""Builds the compiled core: the C receive engine, reply path and load
generator in csrc/ and their Cython bridges."""

from Cython.Build import cythonize
from setuptools import Extension, setup

core = Extension(
    "udp_reader._core",
    sources=["src/udp_reader/_core.pyx", "csrc/engine.c", "csrc/replies.c"],
    include_dirs=["csrc"],
    depends=["csrc/engine.h", "src/udp_reader/engine.pxd", "csrc/replies.h",
             "src/udp_reader/replies.pxd"],
    extra_compile_args=["-O3", "-Wall", "-Wno-unused-function"],
)

sender = Extension(
    "udp_reader._sender",
    sources=["src/udp_reader/_sender.pyx", "csrc/sender.c"],
    include_dirs=["csrc"],
    depends=["csrc/sender.h", "src/udp_reader/sender.pxd"],
    extra_compile_args=["-O3", "-Wall", "-Wno-unused-function"],
)

setup(ext_modules=cythonize([core, sender], compiler_directives={"language_level": "3"}))
