"""Passes over the channel graph (installed as ``cnas_ir.passes``)."""
