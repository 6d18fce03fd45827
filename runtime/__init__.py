"""ember.runtime: load and run an ember artifact with the TVM runtime alone.

Imports numpy, the standard library and `tvm` (which may be a runtime-only install:
`TVM_USE_RUNTIME_LIB=1`, no libtvm_compiler.so) and never `ember.compiler`.

    model = ember.runtime.load("digits.ember")
    outputs = model(input=x)            # {"logits": array}
    model.self_check()                  # bundled sample vs bundled reference

On a machine with the runtime only: `python -m ember.runtime ARTIFACT --self-check`.
"""

from __future__ import annotations

from ember.runtime.artifact import ArtifactError, Manifest, TensorSpec, read_manifest, verify_files
from ember.runtime.check import TOLERANCE, Comparison, OutputMismatchError, compare
from ember.runtime.model import Model, ModelRunError, RuntimeInputError, load, usable_cpus

# What the CLI and `python -m ember.runtime` turn into one line and a non-zero exit.
RUNTIME_ERRORS = (ArtifactError, RuntimeInputError, ModelRunError, OutputMismatchError)

__all__ = [
    "RUNTIME_ERRORS",
    "TOLERANCE",
    "ArtifactError",
    "Comparison",
    "Manifest",
    "Model",
    "ModelRunError",
    "OutputMismatchError",
    "RuntimeInputError",
    "TensorSpec",
    "compare",
    "load",
    "read_manifest",
    "usable_cpus",
    "verify_files",
]
