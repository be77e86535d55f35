"""Heads of the MMSelfSup pretext-task algorithms as Flax modules: classifiers over backbone or neck features."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jssl.models.necks import global_avg_pool


class ClsHead(nn.Module):
  """MMSelfSup's ClsHead: [global average pool] -> one linear layer -> class scores.

  The reference initializes the linear layer Normal(0, std) with bias 0 (std 0.01 by default; Relative Location
  uses 0.005)."""
  num_classes: int
  with_avg_pool: bool = False
  init_std: float = 0.01
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.with_avg_pool:
      x = global_avg_pool(x)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(self.init_std),
                    bias_init=nn.initializers.zeros, dtype=self.dtype, name='fc_cls')(x)
