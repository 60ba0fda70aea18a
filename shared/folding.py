"""Fold BatchNorm into the convolution (or linear layer) before it, in a copy of a torch half.

In eval mode a BatchNorm is an affine map per channel, so ``bn(conv(x))`` equals one convolution with
scaled weights and a shifted bias: one pass over the activations instead of two. The result is not
bit-exact (the folded weights round differently): logits stay within 1e-4 of the unfolded halves
(tests/unit/engines/test_folding.py; bench/results/fold_bn.json measures time and error). The copy has
its own parameters; the model and its other halves are untouched. A BatchNorm whose convolution's output
crosses the cut (or has other users) stays as it is.
"""

from __future__ import annotations

from torch import fx, nn
from torch.fx.experimental.optimization import fuse

__all__ = ["count_batchnorms", "fold_batchnorm"]


def fold_batchnorm(half: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``half`` (eval mode) with every BatchNorm that directly follows a convolution folded into it."""
    if half.training:
        raise ValueError("BatchNorm folds into a convolution in eval mode only: call .eval() first")
    folded = fuse(half, inplace=False, no_trace=True)
    if not isinstance(folded, fx.GraphModule):  # NOTE: fuse returns a GraphModule for a GraphModule
        raise TypeError(f"folding returned a {type(folded).__name__}")
    return folded


def count_batchnorms(module: nn.Module) -> int:
    """BatchNorm layers ``module`` still runs (a GraphModule keeps only the submodules its graph calls)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
