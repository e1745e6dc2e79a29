"""Inference rewrites on numpy weights: BatchNorm folding and merging a node's operations.

Each function is one exact identity of eval-mode arithmetic (only float rounding changes), so
each is tested on its own against the unfused computation. Intermediate products are taken in
float64 and rounded to float32 once, which is at least as accurate as PyTorch's float32 BN.

- :func:`bn_scale_shift`: eval-mode ``BatchNorm2d`` is the per-channel affine map
  ``y = scale * x + shift`` with ``scale = gamma / sqrt(var + eps)`` and
  ``shift = beta - mean * scale`` (``gamma = 1, beta = 0`` when ``affine=False``).
- :func:`fold_bn_into_conv`: ``BN(conv(x))`` is a conv whose output rows are scaled by
  ``scale`` and whose bias is ``shift`` (plus ``scale * bias`` when the conv had one).
- :func:`merge_node_ops`: the J operations of a NASNet node each compute
  ``y_j = PW_j(DW_j(x_j)) + b_j`` (BN folded); ``z = sum_j y_j`` is one depthwise conv over
  the concatenated inputs ``[x_1; ...; x_J]`` followed by one pointwise conv whose weight is
  ``[PW_1 | ... | PW_J]`` and whose bias is ``sum_j b_j`` -- a sum of matrix products over
  disjoint column blocks is one product over the concatenated blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["BN_EPS", "MergedNode", "bn_scale_shift", "fold_bn_into_conv", "merge_node_ops"]

BN_EPS = 1e-5  # nn.BatchNorm2d's default, which every lowered BN uses


def bn_scale_shift(
    mean: np.ndarray,
    var: np.ndarray,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    eps: float = BN_EPS,
) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode BN as ``scale * x + shift``: (float64[C], float64[C]) from float[C] stats.

    ``weight``/``bias`` are gamma/beta (None for ``affine=False``). Kept in float64 so folding
    rounds once.
    """
    scale = 1.0 / np.sqrt(np.asarray(var, np.float64) + eps)
    if weight is not None:
        scale = scale * np.asarray(weight, np.float64)
    shift = -np.asarray(mean, np.float64) * scale
    if bias is not None:
        shift = shift + np.asarray(bias, np.float64)
    return scale, shift


def fold_bn_into_conv(
    weight: np.ndarray, scale: np.ndarray, shift: np.ndarray, bias: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``BN(conv(x))`` as one conv: float32 weight (O, I, kh, kw) and float32 bias (O,).

    ``weight`` is the conv's (O, I, kh, kw) kernel (PyTorch/ONNX layout), ``scale``/``shift``
    (O,) come from :func:`bn_scale_shift`, ``bias`` (O,) is the conv's own bias if it has one.
    """
    scale = np.asarray(scale, np.float64)
    w = np.asarray(weight, np.float64) * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    b = np.asarray(shift, np.float64)
    if bias is not None:
        b = b + scale * np.asarray(bias, np.float64)
    return w.astype(np.float32), b.astype(np.float32)


@dataclass(frozen=True)
class MergedNode:
    """One node's operations as a single depthwise + pointwise pair.

    ``dw`` float32 (n, 1, 3, 3): the depthwise filters of every op's inputs, op after op;
    ``pw`` float32 (C, n, 1, 1): the pointwise columns in the same order, BN scale folded in;
    ``bias`` float32 (C,): the sum of the ops' BN shifts.
    """

    dw: np.ndarray
    pw: np.ndarray
    bias: np.ndarray


def merge_node_ops(dws: Sequence[np.ndarray], pws: Sequence[np.ndarray], biases: Sequence[np.ndarray]) -> MergedNode:
    """Merge J operations ``y_j = PW_j(DW_j(x_j)) + b_j`` (BN already folded) into one.

    ``dws[j]`` (n_j, 1, 3, 3), ``pws[j]`` (C, n_j, 1, 1), ``biases[j]`` (C,). The merged node
    reads ``concat(x_1, ..., x_J)`` along channels (n = sum n_j) and computes ``sum_j y_j``.
    The bias sum is taken in float64: it is the one place where J roundings would add up.
    """
    if not dws or not (len(dws) == len(pws) == len(biases)):
        raise ValueError("merge_node_ops needs the same positive number of dw, pw and bias arrays")
    bias = np.sum([np.asarray(b, np.float64) for b in biases], axis=0)
    return MergedNode(
        dw=np.ascontiguousarray(np.concatenate(dws, 0), np.float32),
        pw=np.ascontiguousarray(np.concatenate(pws, 1), np.float32),
        bias=bias.astype(np.float32),
    )
