"""MoCo v3 (Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers").

A base encoder (backbone -> projector -> predictor) and a momentum encoder (backbone -> projector, an exponential
moving average of the base one, no predictor). Two views; each view's prediction is contrasted against the
momentum encoder's keys of the other view, over the global batch (positives on the diagonal, the other images'
keys as negatives, no queue):

    loss = ctr(p1, k2) + ctr(p2, k1),  ctr(p, k) = 2 T * CE(normalize(p) @ normalize(k).T / T, diagonal)

(MMSelfSup / mmpretrain MoCoV3Head with `CrossEntropyLoss(loss_weight=2 * T)`; the official code's `* 2 * T`.)
The cross entropy is the mean over the global batch: the reference averages per-GPU means over GPUs (DDP), the same.

Details that follow the reference (mmpretrain `MoCoV3`, `MoCoV3ViT`, `MoCoV3Head`, `NonLinearNeck`, `CosineEMA`):
- Each view goes through the networks on its own, so BatchNorm statistics (projector, predictor; ResNet backbone)
  are per view, over the global batch (SyncBN). The momentum encoder (`method_state['target']`, jssl/parts/ema.py)
  runs in train mode (batch statistics); its running statistics are the base encoder's, copied at every update and
  moved by its own forwards (`update_buffers=False`).
- Momentum: target <- m * target + (1 - m) * online with m rising from `base_momentum` (0.99) to 1 on a cosine
  over the run (mmpretrain writes `base_momentum=0.01` for the weight of the online params: 1 - 0.99). The
  reference updates the momentum encoder at the start of iteration i with the params after i optimizer steps and
  m(i); here `after_step` of iteration i does the same update with the params after i + 1 steps and m(i + 1), so
  the keys of every iteration come from the same momentum encoder.
- ViT: the patch embedding is frozen (`stop_grad_conv1`: stop-gradient after the projection, and the optimizer
  config lists it in `frozen_names` so that weight decay does not move it either); fixed 2-D sin-cos position
  embedding; the features are the cls token after the final LayerNorm. MoCo v3's initialization is the ViT's
  init_mode='moco_v3' (unless config.backbone.kwargs names another): the q, k and v thirds of each qkv weight
  Xavier-uniform on their own, cls token N(0, 1e-6), Xavier-uniform linears and patch projection, zero biases.
- Projector and predictor: `NonLinearNeck`s without biases, BN + ReLU between the fcs, last BN without affine
  (the ResNet recipe's predictor has no last BN); torch's default Linear init.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jssl import losses
from jssl.methods import base
from jssl.models import build_backbone
from jssl.models.necks import NonLinearNeck, global_avg_pool, torch_linear_init
from jssl.models.vit import VisionTransformer
from jssl.parts.ema import EmaTarget

TARGET_PARTS = ('backbone', 'neck')  # the momentum encoder: backbone + projector


def last_output(x):
  """ResNets return their stages (the last one is used), a ViT with output='cls' one [B, D] array."""
  return x[-1] if isinstance(x, (list, tuple)) else x


class MoCoV3Net(nn.Module):
  backbone: nn.Module
  neck: nn.Module   # projector
  head: nn.Module   # predictor (MoCoV3Head.predictor)

  def __call__(self, images, train: bool = True):
    return self.head(self.project(images, train), train=train)

  def project(self, images, train: bool = True):
    return self.neck(last_output(self.backbone(images, train=train)), train=train)

  def features(self, images):
    return global_avg_pool(last_output(self.backbone(images, train=False)))


def contrastive_loss(pred, target, temperature):
  """MoCoV3Head.loss: cross entropy of normalize(pred) @ normalize(target).T / T against the diagonal, times 2 T.

  pred, target: [N, D] over the global batch; no gradient flows to the target (the momentum encoder's keys)."""
  pred = losses.l2_normalize(pred.astype(jnp.float32))
  target = losses.l2_normalize(jax.lax.stop_gradient(target).astype(jnp.float32))
  logits = pred @ target.T / temperature
  labels = jnp.arange(pred.shape[0])
  return 2. * temperature * optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


class Method(base.Method):
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    del steps_per_epoch, num_records
    dtype = base.compute_dtype(config)
    m = config.model
    self.ema = EmaTarget(m.base_momentum, TARGET_PARTS, schedule='cosine', total_steps=total_steps)
    self.temperature = m.temperature
    backbone = build_backbone(config.backbone.name, dtype=dtype, **config.backbone.get('kwargs', {}))
    self.vit = isinstance(backbone, VisionTransformer)
    if self.vit and 'init_mode' not in config.backbone.get('kwargs', {}):
      backbone = backbone.clone(init_mode='moco_v3')  # MoCoV3ViT.init_weights
    if self.vit and backbone.output not in ('cls', 'mean'):
      raise ValueError(f"config.backbone.kwargs.output: MoCo v3 needs one vector per image, 'cls' (the "
                       f"reference) or 'mean'; got '{backbone.output}'")
    neck = lambda hid, out, layers, last_bn: NonLinearNeck(
        hid_channels=hid, out_channels=out, num_layers=layers, with_bias=False, with_last_bn=last_bn,
        with_last_bn_affine=False, with_last_bias=False, kernel_init=torch_linear_init, dtype=dtype)
    self.net = MoCoV3Net(
        backbone=backbone,
        neck=neck(m.neck_hid_channels, m.neck_out_channels, m.neck_num_layers, True),
        head=neck(m.pred_hid_channels, m.neck_out_channels, 2, m.pred_with_last_bn))

  def init(self, rng, batch):
    params, model_state = self.init_net(rng, batch['views'][0])
    # the momentum encoder starts as a copy of the base encoder's backbone + projector
    return params, model_state, {'target': self.ema.init(params, model_state)}

  def loss(self, params, model_state, method_state, batch, rng, step):
    v1, v2 = batch['views'][:2]
    p1, model_state = self.forward(params, model_state, v1)
    p2, model_state = self.forward(params, model_state, v2)  # running BN stats see view 1, then view 2
    # keys: the momentum encoder in train mode (batch statistics) from the base encoder's running statistics
    target = self.ema.with_online_stats(method_state['target'], model_state)
    k1, target = self.ema.forward(self.net, target, v1, method=MoCoV3Net.project)
    k2, target = self.ema.forward(self.net, target, v2, method=MoCoV3Net.project)
    loss = contrastive_loss(p1, k2, self.temperature) + contrastive_loss(p2, k1, self.temperature)
    metrics = {'loss': loss, 'momentum': self.ema.momentum(step)}
    return loss, (metrics, model_state, {**method_state, 'target': target})

  def after_step(self, params, method_state, step):
    """target <- m * target + (1 - m) * online with the freshly updated params and m of the next iteration."""
    return {**method_state, 'target': self.ema.update(method_state['target'], params, step + 1)}
