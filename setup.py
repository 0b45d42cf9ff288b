"""Install fastprompt.

The default install is pure Python: ``pip install -e .`` needs no compiler and no GPU.
Compiled kernels (``csrc/``) and Triton kernels (``kernels/``) are optional backends of
``fastprompt.ops.prompt_attention``; the eager backend always works.
"""
import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    with open(os.path.join(HERE, "fastprompt", "version.py"), encoding="utf-8") as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def read_readme():
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        return f.read()


setup(
    name="fastprompt",
    version=read_version(),
    description="Fast, exact prompt learning (CoOp, CoCoOp, ...) on open_clip CLIP models",
    long_description=read_readme(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["fastprompt", "fastprompt.*"]),
    install_requires=[
        "torch>=2.4",
        "torchvision",
        "open_clip_torch>=2.24",
        "safetensors>=0.4",
        "tqdm",
        "numpy",
        "pillow",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark", "hypothesis"],
        "kernels": ["triton", "ninja", "pybind11"],
    },
    entry_points={"console_scripts": ["fastprompt=fastprompt.cli:main"]},
)
