"""Errors ember reports to users: one clear message, a stable exit status, never a traceback."""

from __future__ import annotations


class EmberError(Exception):
    """Base of every error ember reports to a user; `exit_code` is what the CLI exits with."""

    exit_code = 1


class InvalidModelError(EmberError):
    """The input file is not a valid ONNX model (truncated, random bytes, broken graph)."""

    exit_code = 2


class UnsupportedModelError(EmberError):
    """The model is valid ONNX but uses operators, opsets or dtypes ember does not support."""

    exit_code = 2


class IRParseError(EmberError):
    """IR text could not be parsed; the message names the line."""

    exit_code = 2


class VerifyError(EmberError):
    """A graph broke an IR invariant (SSA, types, order); the message names the node."""


class InferError(EmberError):
    """Shape/type inference failed for a node (bad attributes or incompatible input types)."""

    exit_code = 2


class EvalError(EmberError):
    """The interpreter could not run a graph (bad feeds, an operator failed)."""

    exit_code = 2
