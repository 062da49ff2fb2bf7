"""fasttrain: a high-throughput trainer for long-tailed image recognition.

`loaders/` and `kernels/` live at the top level of the repository but are installed as
`fasttrain.loaders` and `fasttrain.kernels` (PyPI has unrelated packages named `loaders`
and `kernels`, so they must never be importable under those generic names).
"""
from setuptools import find_packages, setup

core = find_packages(include=["fasttrain", "fasttrain.*"])
loaders = ["fasttrain.loaders"] + ["fasttrain.loaders." + p for p in find_packages("loaders")]
kernels = ["fasttrain.kernels"] + ["fasttrain.kernels." + p for p in find_packages("kernels")]

setup(
    name="fasttrain",
    version="0.1.0",
    description="High-throughput trainer for long-tailed image recognition (GLMC, SSD, FBL, baselines)",
    python_requires=">=3.11",
    # The top-level configs/ ship inside the package (fasttrain/configs/), addressable by name.
    packages=core + loaders + kernels + ["fasttrain.configs"],
    package_dir={
        "fasttrain": "fasttrain",
        "fasttrain.loaders": "loaders",
        "fasttrain.kernels": "kernels",
        "fasttrain.configs": "configs",
        **{"fasttrain.loaders." + p: "loaders/" + p.replace(".", "/") for p in find_packages("loaders")},
        **{"fasttrain.kernels." + p: "kernels/" + p.replace(".", "/") for p in find_packages("kernels")},
    },
    package_data={"fasttrain": ["splits/*/*.txt.gz"], "fasttrain.configs": ["*.yaml", "*/*.yaml"]},
    include_package_data=True,
    install_requires=[
        # Tested ranges: 2.14.1 / 0.29.1 (x86_64, CUDA build) and 2.9.1 / 0.24.1 (aarch64, CPU build).
        "torch>=2.9,<2.15",
        "torchvision>=0.24,<0.30",
        "numpy",
        "pyyaml",
        "tqdm",
        "tensorboard",
        "matplotlib",
        "timm",
        "pillow",
    ],
    extras_require={
        # onnx / wandb: the export and logger tests run in CI
        "dev": ["pytest", "build", "wheel", "onnx", "onnxruntime", "wandb"],
        "onnx": ["onnx", "onnxruntime"],
        "wandb": ["wandb"],
        "clip": ["open_clip_torch"],  # open_clip/<arch> backbones (CLIP image towers)
        "dali": ["nvidia-dali-cuda130"],  # CUDA 13 drivers (and CPU-only machines)
        "dali-cuda12": ["nvidia-dali-cuda120"],
        # FFCV builds a C extension: needs pkg-config, libopencv-dev and libturbojpeg0-dev (apt)
        # (tested: numba 0.68.1, whose type table the ffcv backend works around, see loaders/ffcv_pipeline.py)
        "ffcv": ["ffcv==1.0.2", "numba==0.68.1"],
        # the documentation site: mkdocs build --strict -f fasttrain/mkdocs.yml (sources in fasttrain/docs/,
        # which are not installed: no package_data pattern matches them)
        "docs": ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26"],
    },
    entry_points={"console_scripts": ["fasttrain = fasttrain.cli:main"]},
)
