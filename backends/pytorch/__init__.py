"""PyTorch backend: lower a channel graph to a module, move weights both ways (SPEC §5)."""

from cnas_ir.backends.pytorch.lower import CnasModule, Mode, lower, to_graph

__all__ = ["CnasModule", "Mode", "lower", "to_graph"]
