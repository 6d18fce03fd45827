"""Operators: recurrent networks (LSTM, GRU, RNN)."""

from __future__ import annotations

from ember.compiler.ops.registry import OpDef

OPS: list[OpDef] = []
