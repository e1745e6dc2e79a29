"""PyTorch backend: lower a channel graph to a module, move weights both ways (SPEC §5).

Importing it sets ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` to 16384 unless the environment sets it:
oneDNN keeps 1,024 primitives by default, and a compact network has about 150 distinct conv
shapes per layout and batch size (every node its own channel count), three primitives each in
training (forward, backward data, backward weights). A process holding a second network, or
running several batch sizes, overflows the default and re-creates primitives on every call
(compact network, batch-1 inference: 154 ms instead of 55-61 ms). oneDNN reads the variable
when it creates its first primitive, so this import must come before the process's first
convolution -- any cnas-ir command does so.
"""

import os

os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")

from cnas_ir.backends.pytorch.graphs import CudaGraphReplay  # noqa: E402
from cnas_ir.backends.pytorch.lower import CnasModule, Mode, lower, to_graph  # noqa: E402

__all__ = ["CnasModule", "CudaGraphReplay", "Mode", "lower", "to_graph"]
