"""python -m cnas_ir: the same as the cnas-ir command."""

from cnas_ir.app.cli import entry

entry()
