"""Barlow Twins (Zbontar et al. 2021): two augmented views through one encoder + 3-layer projector; the
cross-correlation matrix of the batch-normalized projections is pushed towards the identity (invariance on the
diagonal, redundancy reduction off it). No negatives, no predictor, no momentum target.

As in the reference (and the paper's code), each view goes through the network in its own forward pass, so the
BatchNorm statistics of backbone and projector are per view, over the global batch (SyncBN). The loss normalizes
each embedding dimension over the global batch and averages the correlation over all N samples.
"""
import flax.linen as nn

from jssl import losses
from jssl.methods import base
from jssl.models import build_backbone
from jssl.models.necks import NonLinearNeck


class Method(base.Method):
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    del total_steps, steps_per_epoch, num_records  # no schedule or per-image state inside the method
    dtype = base.compute_dtype(config)
    m = config.model
    self.lambd = m.lambd
    self.net = base.BackboneNeck(
        backbone=build_backbone(config.backbone.name, dtype=dtype, **config.backbone.get('kwargs', {})),
        # MMSelfSup: fc without bias, BN + ReLU between, no BN after the last fc; Kaiming-uniform fcs
        neck=NonLinearNeck(hid_channels=m.neck_hid_channels, out_channels=m.neck_out_channels,
                           num_layers=m.neck_num_layers, with_last_bn=False,
                           kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'uniform'), dtype=dtype))

  def loss(self, params, model_state, method_state, batch, rng, step):
    v1, v2 = batch['views'][:2]
    z1, model_state = self.forward(params, model_state, v1)
    z2, model_state = self.forward(params, model_state, v2)  # running BN stats see view 1, then view 2
    loss = losses.cross_correlation_loss(z1, z2, self.lambd)
    return loss, ({'loss': loss}, model_state, method_state)
