"""ONNX backend: export the compacted network for deployment and check it (SPEC §5).

``export(graph, path, check=..., allow_untrained=..., opset=...)`` is the entry point; the
inference rewrites it applies are separate, tested steps in :mod:`.fusion` (BN folding, merging
a node's ops), :mod:`.builder` (gather planning, dead-code elimination) and :mod:`.emit`.
"""

from cnas_ir.backends.onnx.emit import EmitStats, emit_model
from cnas_ir.backends.onnx.export import CheckReport, ExportReport, check_onnx, export, initial_weights

__all__ = ["CheckReport", "EmitStats", "ExportReport", "check_onnx", "emit_model", "export", "initial_weights"]
