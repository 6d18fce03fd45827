"""ember's compiler side: IR, op table, importer, printer/parser, verifier, interpreter, CLI."""

from __future__ import annotations

__version__ = "0.1.0"
