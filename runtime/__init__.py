"""ember.runtime: load and run an ember artifact with the TVM runtime alone.

Imports numpy, the standard library and `tvm` (which may be a runtime-only install:
`TVM_USE_RUNTIME_LIB=1`, no libtvm_compiler.so) and never `ember.compiler`.

    model = ember.runtime.load("digits.ember")
    outputs = model(input=x)            # {"logits": array}
"""

from __future__ import annotations

from ember.runtime.artifact import ArtifactError, Manifest, read_manifest, verify_files
from ember.runtime.model import Model, RuntimeInputError, load

__all__ = ["ArtifactError", "Manifest", "Model", "RuntimeInputError", "load", "read_manifest", "verify_files"]
