"""The dtypes of ember's IR: short names, their numpy and ONNX equivalents."""

from __future__ import annotations

import ml_dtypes
import numpy as np
from onnx import TensorProto

from ember.compiler.errors import UnsupportedModelError

# short name -> numpy dtype; the order is the printing order of `ember inspect`.
NUMPY: dict[str, np.dtype] = {
    "f64": np.dtype(np.float64),
    "f32": np.dtype(np.float32),
    "f16": np.dtype(np.float16),
    "bf16": np.dtype(ml_dtypes.bfloat16),
    "i64": np.dtype(np.int64),
    "i32": np.dtype(np.int32),
    "i16": np.dtype(np.int16),
    "i8": np.dtype(np.int8),
    "u64": np.dtype(np.uint64),
    "u32": np.dtype(np.uint32),
    "u16": np.dtype(np.uint16),
    "u8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
}

ONNX: dict[int, str] = {
    TensorProto.DOUBLE: "f64",
    TensorProto.FLOAT: "f32",
    TensorProto.FLOAT16: "f16",
    TensorProto.BFLOAT16: "bf16",
    TensorProto.INT64: "i64",
    TensorProto.INT32: "i32",
    TensorProto.INT16: "i16",
    TensorProto.INT8: "i8",
    TensorProto.UINT64: "u64",
    TensorProto.UINT32: "u32",
    TensorProto.UINT16: "u16",
    TensorProto.UINT8: "u8",
    TensorProto.BOOL: "bool",
}
TO_ONNX: dict[str, int] = {name: code for code, name in ONNX.items()}

FLOATS = ("f64", "f32", "f16", "bf16")
INTS = ("i64", "i32", "i16", "i8", "u64", "u32", "u16", "u8")


def from_numpy(dtype: np.dtype) -> str:
    """The ember name of a numpy dtype; raises UnsupportedModelError for others (strings...)."""
    dtype = np.dtype(dtype)
    for name, candidate in NUMPY.items():
        if candidate == dtype:
            return name
    raise UnsupportedModelError(f"dtype {dtype} is not supported by ember")


def from_onnx(code: int, where: str = "") -> str:
    """The ember name of an ONNX TensorProto data type code."""
    if code not in ONNX:
        name = TensorProto.DataType.Name(code) if code in TensorProto.DataType.values() else str(code)
        suffix = f" ({where})" if where else ""
        raise UnsupportedModelError(f"ONNX dtype {name} is not supported by ember{suffix}")
    return ONNX[code]


def to_numpy(name: str) -> np.dtype:
    """The numpy dtype of an ember dtype name."""
    return NUMPY[name]


def is_float(name: str) -> bool:
    """True for floating-point dtypes."""
    return name in FLOATS
