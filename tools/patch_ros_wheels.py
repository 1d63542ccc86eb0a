#!/usr/bin/env python3
"""Make the ROS 2 PyPI wheels usable for building messages in this venv.

The wheels' exported CMake files (share/*/cmake/*__rosidl_generator_pyExport.cmake)
name the include directories of the machine the wheels were built on
(/opt/python/cp311-cp311/...). This rewrites them to the running interpreter's
Python include dir and this venv's numpy include dir. Idempotent.

Usage: python tools/patch_ros_wheels.py   (run with the venv's python)
"""
from __future__ import annotations

import glob
import os
import re
import sys
import sysconfig


def main() -> int:
    """Patch the exported CMake files; print how many were changed."""
    import numpy

    prefix = sys.prefix
    py_include = sysconfig.get_paths()['include']
    np_include = numpy.get_include()
    pattern = re.compile(r'/opt/python/cp\d+-cp\d+/include/python3\.\d+')
    np_pattern = re.compile(
        r'/opt/python/cp\d+-cp\d+/lib/python3\.\d+/site-packages/numpy/_core/include')
    changed = 0
    for path in glob.glob(os.path.join(prefix, 'share', '*', 'cmake', '*.cmake')):
        with open(path, encoding='utf-8') as f:
            text = f.read()
        if '/opt/python/' not in text:
            continue
        new = np_pattern.sub(np_include, text)
        new = pattern.sub(py_include, new)
        if new != text:
            with open(path, 'w', encoding='utf-8') as f:
                f.write(new)
            changed += 1
    if not os.path.isdir(py_include):
        print(f'error: Python include dir {py_include} does not exist; '
              'install the Python development headers', file=sys.stderr)
        return 1
    print(f'patched {changed} CMake export file(s) under {prefix}/share '
          f'(python include: {py_include})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
