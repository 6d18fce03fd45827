"""ember.targets: everything that imports TVM's compiler (lowering, schedules, builds)."""

from __future__ import annotations

from ember.targets.build import Built, build
from ember.targets.registry import TargetSpec, resolve_target, targets

__all__ = ["Built", "TargetSpec", "build", "resolve_target", "targets"]
