"""SimCLR (Chen et al. 2020): two augmented views, a shared encoder + MLP projector, NT-Xent over 2N samples.

The backbone sees both views in one batch, so BatchNorm statistics span both views and every device (SyncBN);
the loss over the global batch gives every sample 2N - 2 negatives drawn from all devices.
"""
import jax.numpy as jnp

from jssl import losses
from jssl.methods import base
from jssl.models import build_backbone
from jssl.models.necks import NonLinearNeck


class Method(base.Method):
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    del total_steps, steps_per_epoch, num_records  # no schedule or per-image state inside the method
    dtype = base.compute_dtype(config)
    m = config.model
    self.temperature = m.temperature
    self.net = base.BackboneNeck(
        backbone=build_backbone(config.backbone.name, dtype=dtype, **config.backbone.get('kwargs', {})),
        neck=NonLinearNeck(hid_channels=m.neck_hid_channels, out_channels=m.neck_out_channels,
                           num_layers=m.neck_num_layers, dtype=dtype))

  def loss(self, params, model_state, method_state, batch, rng, step):
    v1, v2 = batch['views'][:2]
    n = v1.shape[0]
    z, model_state = self.forward(params, model_state, jnp.concatenate([v1, v2]))
    loss = losses.nt_xent(z[:n], z[n:], self.temperature)
    return loss, ({'loss': loss}, model_state, method_state)
