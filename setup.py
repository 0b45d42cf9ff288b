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


def compiled_extensions():
    """``(ext_modules, cmdclass)`` for an ahead-of-time build of ``csrc/``; empty by default.

    ``FASTPROMPT_BUILD_EXT=1 pip install -e . --no-build-isolation`` builds the CPU extension and,
    when ``CUDA_HOME`` is set, the CUDA one (architectures from ``FASTPROMPT_CUDA_ARCH_LIST``,
    default ``8.0;9.0+PTX``). Sources and flags come from ``fastprompt/ops/extension_spec.py``, loaded as
    a file so that the default install never imports torch. Without it the kernels build just in time.
    """
    if os.environ.get("FASTPROMPT_BUILD_EXT", "0") != "1":
        return [], {}
    import importlib.util

    spec = importlib.util.spec_from_file_location("_fastprompt_extension_spec",
                                                  os.path.join(HERE, "fastprompt", "ops", "extension_spec.py"))
    extension_spec = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extension_spec)
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    def extension(kind, cls):
        args = extension_spec.build_args(kind)
        compile_args = {"cxx": args["cflags"]}
        if args["cuda_cflags"]:
            compile_args["nvcc"] = args["cuda_cflags"]
        sources = [os.path.relpath(s, HERE) for s in args["sources"]]
        return cls(f"fastprompt.{args['name']}", sources, extra_compile_args=compile_args)

    ext_modules = [extension("cpu", CppExtension)]
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        ext_modules.append(extension("cuda", CUDAExtension))
    return ext_modules, {"build_ext": BuildExtension}


EXT_MODULES, CMDCLASS = compiled_extensions()


setup(
    name="fastprompt",
    version=read_version(),
    description="Fast, exact prompt learning (CoOp, CoCoOp, ...) on open_clip CLIP models",
    long_description=read_readme(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["fastprompt", "fastprompt.*"]) + ["fastprompt.kernels"],
    package_dir={"fastprompt.kernels": "kernels"},  # Triton source lives at the top level
    package_data={"fastprompt.train": ["recipes/*/*.yaml"],  # the original training configurations
                  "fastprompt.protocols": ["published/*.yaml"]},  # the papers' numbers beside the results tables
    install_requires=[
        "torch>=2.4",
        "torchvision",
        "open_clip_torch>=2.24",
        "safetensors>=0.4",
        "tqdm",
        "numpy",
        "pillow",
        "ninja",  # builds the C++ kernels just in time on first use (fastprompt.ops.jit)
        "pyyaml",  # recipes and config files of fastprompt train
        "webdataset",  # ImageNet-21K WebDataset tar shards (fastprompt data pack, ShardDataset)
    ],
    extras_require={
        # transformers: the Hugging Face text towers (RoBERTa, XLM-R, mT5, NLLB) of tests/test_every_backbone.py;
        # scipy: SoftCPT's StanfordCars/OxfordFlowers sources read the download's .mat files with scipy.io, as the
        # original does (tests/test_multitask_mat_sources.py); fastprompt imports it only for those two sources
        "test": ["pytest>=7", "pytest-benchmark", "hypothesis", "transformers>=4.40", "scipy"],
        "kernels": ["triton", "pybind11"],
        "train": ["matplotlib", "tensorboard"],  # curves.png and TensorBoard events of training runs
    },
    entry_points={"console_scripts": ["fastprompt=fastprompt.cli:main"]},
    ext_modules=EXT_MODULES,
    cmdclass=CMDCLASS,
)
