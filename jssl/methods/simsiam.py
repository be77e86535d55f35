"""SimSiam (Chen & He 2021): one encoder (backbone -> 3-layer projector) for both views and a predictor; each
view's prediction is pulled towards the other view's projection through a stop-gradient, which alone prevents
collapse (no negatives, no momentum encoder). Loss: 0.5 * (D(p1, z2) + D(p2, z1)) with D = -cos.

As in MMSelfSup, each view goes through the network on its own (per-view BatchNorm statistics over the global
batch: SyncBN). The predictor trains at a fixed lr: `optimizer.fixed_lr_names = ('head',)` in the config.
"""
import flax.linen as nn

from jssl import losses
from jssl.methods import base
from jssl.models import build_backbone
from jssl.models.necks import NonLinearNeck


class SimSiamNet(base.BackboneNet):
  neck: nn.Module   # projector
  head: nn.Module   # predictor (MMSelfSup's LatentPredictHead.predictor)

  def __call__(self, images, train: bool = True):
    """(projection z, prediction p)."""
    z = self.neck(self.backbone(images, train=train)[-1], train=train)
    return z, self.head(z, train=train)


class Method(base.Method):
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    del total_steps, steps_per_epoch, num_records  # no schedule or per-image state inside the method
    dtype = base.compute_dtype(config)
    m = config.model
    self.net = SimSiamNet(
        backbone=build_backbone(config.backbone.name, dtype=dtype, **config.backbone.get('kwargs', {})),
        neck=NonLinearNeck(hid_channels=m.neck_hid_channels, out_channels=m.neck_out_channels, num_layers=3,
                           with_last_bn=True, with_last_bn_affine=False, with_avg_pool=True, dtype=dtype),
        head=NonLinearNeck(hid_channels=m.pred_hid_channels, out_channels=m.neck_out_channels, num_layers=2,
                           with_last_bn=False, with_last_bias=True, with_avg_pool=False, dtype=dtype))

  def loss(self, params, model_state, method_state, batch, rng, step):
    v1, v2 = batch['views'][:2]

    (z1, p1), model_state = self.forward(params, model_state, v1)
    (z2, p2), model_state = self.forward(params, model_state, v2)
    # the stop-gradient on z is inside the loss
    loss = 0.5 * (losses.negative_cosine_similarity(p1, z2) + losses.negative_cosine_similarity(p2, z1))
    return loss, ({'loss': loss}, model_state, method_state)
