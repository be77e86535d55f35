"""BYOL (Grill et al. 2020): an online network (backbone -> projector -> predictor) regresses the projection of
the other view by a target network (backbone -> projector) that is an exponential moving average of the online
one; no negatives. The target's momentum follows a cosine schedule from `base_momentum` to 1 (MMSelfSup's
CosineEMA with `momentum = 1 - base_momentum`).

As in MMSelfSup, each view goes through the networks on its own, so BatchNorm statistics are per view (over the
global batch: SyncBN). The target (`method_state['target']`, jssl/parts/ema.py: its params and BatchNorm
statistics) runs in train mode (batch statistics), like the reference's target network; its running statistics
are the online ones, copied at every update and moved by its own forwards (the reference's `update_buffers=False`).

Step alignment with the reference: MMSelfSup updates the target at the start of iteration t (before the target
forward) with the online weights of that moment and the momentum of step t; here `after_step` of step t does the
same update right after the optimizer step, with the momentum of step t + 1, so the target used at every step
is the reference's.

Loss: 2 - 2 cos(p1, z2) + 2 - 2 cos(p2, z1) (normalized MSE, summed over both directions). The reference logs
2 * (-cos(p1, z2) - cos(p2, z1)), i.e. the same minus the constant 4: the gradients are equal.
"""
import flax.linen as nn

from jssl import losses
from jssl.methods import base
from jssl.models import build_backbone
from jssl.models.necks import NonLinearNeck
from jssl.parts.ema import EmaTarget

TARGET_PARTS = ('backbone', 'neck')  # what the target network holds: backbone + projector


class BYOLNet(base.BackboneNet):
  neck: nn.Module   # projector
  head: nn.Module   # predictor (MMSelfSup's LatentPredictHead.predictor)

  def __call__(self, images, train: bool = True):
    return self.head(self.project(images, train), train=train)

  def project(self, images, train: bool = True):
    return self.neck(self.backbone(images, train=train)[-1], train=train)


class Method(base.Method):
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    del steps_per_epoch, num_records
    dtype = base.compute_dtype(config)
    m = config.model
    self.ema = EmaTarget(m.base_momentum, TARGET_PARTS, schedule='cosine', total_steps=total_steps)
    self.net = BYOLNet(
        backbone=build_backbone(config.backbone.name, dtype=dtype, **config.backbone.get('kwargs', {})),
        # the reference's projector and predictor: fcs with biases (except the last), BN + ReLU between, no last BN
        neck=NonLinearNeck(hid_channels=m.neck_hid_channels, out_channels=m.neck_out_channels, num_layers=2,
                           with_bias=True, with_last_bn=False, with_avg_pool=True, dtype=dtype),
        head=NonLinearNeck(hid_channels=m.pred_hid_channels, out_channels=m.neck_out_channels, num_layers=2,
                           with_bias=True, with_last_bn=False, with_avg_pool=False, dtype=dtype))

  def init(self, rng, batch):
    params, model_state = self.init_net(rng, batch['views'][0])
    # the target starts as a copy of the online backbone + projector
    return params, model_state, {'target': self.ema.init(params, model_state)}

  def loss(self, params, model_state, method_state, batch, rng, step):
    v1, v2 = batch['views'][:2]
    p1, model_state = self.forward(params, model_state, v1)
    p2, model_state = self.forward(params, model_state, v2)
    # target: train-mode BN (batch statistics), from the online running statistics (update_buffers=False)
    target = self.ema.with_online_stats(method_state['target'], model_state)
    z1, target = self.ema.forward(self.net, target, v1, method=BYOLNet.project)
    z2, target = self.ema.forward(self.net, target, v2, method=BYOLNet.project)
    # symmetric: each view's prediction regresses the other view's target projection
    loss = losses.cosine_similarity_loss(p1, z2) + losses.cosine_similarity_loss(p2, z1)
    metrics = {'loss': loss, 'momentum': self.ema.momentum(step)}
    return loss, (metrics, model_state, {**method_state, 'target': target})

  def after_step(self, params, method_state, step):
    """target <- m * target + (1 - m) * online, on the freshly updated online params (the reference's update at
    the start of step + 1)."""
    return {**method_state, 'target': self.ema.update(method_state['target'], params, step + 1)}
