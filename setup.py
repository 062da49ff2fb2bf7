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
    packages=core + loaders + kernels,
    package_dir={
        "fasttrain": "fasttrain",
        "fasttrain.loaders": "loaders",
        "fasttrain.kernels": "kernels",
        **{"fasttrain.loaders." + p: "loaders/" + p.replace(".", "/") for p in find_packages("loaders")},
        **{"fasttrain.kernels." + p: "kernels/" + p.replace(".", "/") for p in find_packages("kernels")},
    },
    package_data={"fasttrain": ["splits/*/*.txt.gz", "configs/**/*.yaml"]},
    include_package_data=True,
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "numpy",
        "pyyaml",
        "tqdm",
        "tensorboard",
        "matplotlib",
        "timm",
        "pillow",
    ],
    extras_require={
        "dev": ["pytest", "build", "wheel"],
        "dali": ["nvidia-dali-cuda130"],
    },
    entry_points={"console_scripts": ["fasttrain = fasttrain.cli:main"]},
)
