"""Builds the compiled core: the C receive engine, reply path and load
generator in csrc/ and their Cython bridges, and the shared constants."""

import glob

from Cython.Build import cythonize
from setuptools import Extension, setup

FLAGS = ["-O3", "-Wall", "-Wno-unused-function"]

constants = Extension(
    "udp_reader._constants",
    sources=["src/udp_reader/_constants.pyx"],
    include_dirs=["csrc"],
    depends=["csrc/constants.h", "src/udp_reader/constants.pxd"],
    extra_compile_args=FLAGS,
)

core = Extension(
    "udp_reader._core",
    sources=["src/udp_reader/_core.pyx", "csrc/engine.c", "csrc/replies.c"],
    include_dirs=["csrc"],
    depends=["csrc/constants.h", "csrc/engine.h", "src/udp_reader/engine.pxd",
             "csrc/replies.h", "src/udp_reader/replies.pxd",
             "src/udp_reader/constants.pxd", "src/udp_reader/_core.pxd",
             *glob.glob("src/udp_reader/core/*.p*")],
    extra_compile_args=FLAGS,
)

loadgen = Extension(
    "udp_reader._loadgen",
    sources=["src/udp_reader/_loadgen.pyx", "csrc/loadgen.c"],
    include_dirs=["csrc"],
    depends=["csrc/constants.h", "csrc/loadgen.h", "src/udp_reader/constants.pxd",
             "src/udp_reader/loadgen.pxd"],
    extra_compile_args=FLAGS,
)

setup(ext_modules=cythonize([constants, core, loadgen],
                            compiler_directives={"language_level": "3"}))
