"""Backends that lower the channel graph (installed as ``cnas_ir.backends``)."""
