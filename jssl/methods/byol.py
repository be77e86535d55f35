"""BYOL (Grill et al. 2020): an online network (backbone -> projector -> predictor) regresses the projection of
the other view by a target network (backbone -> projector) that is an exponential moving average of the online
one; no negatives. The target's momentum follows a cosine schedule from `base_momentum` to 1 (MMSelfSup's
CosineEMA with `momentum = 1 - base_momentum`).

As in MMSelfSup, each view goes through the networks on its own, so BatchNorm statistics are per view (over the
global batch: SyncBN). The target runs in train mode (batch statistics), like the reference's target network; its
BatchNorm running statistics are the online ones (the reference's `update_buffers=False` copies the online
buffers into the target at every update), so `method_state` holds only the target's parameters.

Step alignment with the reference: MMSelfSup updates the target at the start of iteration t (before the target
forward) with the online weights of that moment and the momentum of step t; here `after_step` of step t does the
same update right after the optimizer step, with the momentum of step t + 1, so the target used at every step
is the reference's.

Loss: 2 - 2 cos(p1, z2) + 2 - 2 cos(p2, z1) (normalized MSE, summed over both directions). The reference logs
2 * (-cos(p1, z2) - cos(p2, z1)), i.e. the same minus the constant 4: the gradients are equal.
"""
import flax.linen as nn
import jax

from jssl import losses
from jssl.methods.base import compute_dtype
from jssl.models import build_backbone
from jssl.models.necks import NonLinearNeck, global_avg_pool
from jssl.train.ema import cosine_momentum, ema_update

TARGET_PARTS = ('backbone', 'neck')  # what the target network holds: backbone + projector


class BYOLNet(nn.Module):
  backbone: nn.Module
  neck: nn.Module   # projector
  head: nn.Module   # predictor (MMSelfSup's LatentPredictHead.predictor)

  def __call__(self, images, train: bool = True):
    return self.head(self.project(images, train), train=train)

  def project(self, images, train: bool = True):
    return self.neck(self.backbone(images, train=train)[-1], train=train)

  def features(self, images):
    return global_avg_pool(self.backbone(images, train=False)[-1])


class Method:
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    del steps_per_epoch, num_records
    dtype = compute_dtype(config)
    m = config.model
    self.total_steps = total_steps
    self.base_momentum = m.base_momentum
    self.net = BYOLNet(
        backbone=build_backbone(config.backbone.name, dtype=dtype, **config.backbone.get('kwargs', {})),
        # the reference's projector and predictor: fcs with biases (except the last), BN + ReLU between, no last BN
        neck=NonLinearNeck(hid_channels=m.neck_hid_channels, out_channels=m.neck_out_channels, num_layers=2,
                           with_bias=True, with_last_bn=False, with_avg_pool=True, dtype=dtype),
        head=NonLinearNeck(hid_channels=m.pred_hid_channels, out_channels=m.neck_out_channels, num_layers=2,
                           with_bias=True, with_last_bn=False, with_avg_pool=False, dtype=dtype))

  def init(self, rng, batch):
    variables = self.net.init(rng, batch['views'][0], train=False)
    params = variables.pop('params')
    model_state = dict(variables)
    # the target starts as a copy of the online backbone + projector
    target = {k: params[k] for k in TARGET_PARTS}
    return params, model_state, {'target': target}

  def momentum(self, step):
    """The target's momentum m(step) (target <- m * target + (1 - m) * online), cosine from base_momentum to 1."""
    return cosine_momentum(step, self.total_steps, self.base_momentum)

  def loss(self, params, model_state, method_state, batch, rng, step):
    v1, v2 = batch['views'][:2]

    def online(state, images):
      p, new_state = self.net.apply({'params': params, **state}, images, train=True, mutable=list(state))
      return p, dict(new_state)

    p1, model_state = online(model_state, v1)
    p2, model_state = online(model_state, v2)

    # target: train-mode BN (batch statistics); its running statistics are the online ones and are not kept
    target = {'params': method_state['target'],
              'batch_stats': {k: model_state['batch_stats'][k] for k in TARGET_PARTS}}
    project = lambda images: self.net.apply(target, images, train=True, method=BYOLNet.project,
                                            mutable=['batch_stats'])[0]
    z1, z2 = jax.lax.stop_gradient(project(v1)), jax.lax.stop_gradient(project(v2))

    # symmetric: each view's prediction regresses the other view's target projection
    loss = losses.cosine_similarity_loss(p1, z2) + losses.cosine_similarity_loss(p2, z1)
    metrics = {'loss': loss, 'momentum': self.momentum(step)}
    return loss, (metrics, model_state, method_state)

  def after_step(self, params, method_state, step):
    """target <- m * target + (1 - m) * online, on the freshly updated online params (the reference's update at
    the start of step + 1)."""
    online = {k: params[k] for k in TARGET_PARTS}
    target = ema_update(method_state['target'], online, self.momentum(step + 1))
    return {**method_state, 'target': target}

  def extract(self, params, model_state, images):
    return self.net.apply({'params': params, **model_state}, images, method=BYOLNet.features)
