"""ember.targets: everything that imports TVM's compiler (lowering, schedules, builds)."""

from __future__ import annotations

from ember.targets.build import Built, build, kernel_count
from ember.targets.registry import TARGETS, TargetSpec, resolve_target, targets

__all__ = ["TARGETS", "Built", "TargetSpec", "build", "kernel_count", "resolve_target", "targets"]
