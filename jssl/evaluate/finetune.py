"""End-to-end fine-tuning of a pretrained backbone with a linear classifier (config.method = 'finetune',
configs/eval/finetune.py): the MAE / BEiT recipe MMSelfSup's fine-tune configs port, and the semi-supervised
ImageNet 1% / 10% protocol.

Per step: host RandomResizedCrop + flip (+ RandAugment, config.data.randaugment) -> device normalization (+ random
erasing, an op of config.data.augment) -> Mixup / CutMix with label smoothing folded into the soft targets
(config.model.mixup_alpha / cutmix_alpha; off when both are 0, then plain label-smoothed cross-entropy) ->
backbone in train mode (drop path, BatchNorm batch statistics) -> pooled feature -> Linear head -> cross-entropy.
The optimizer carries the layer-wise lr decay (config.optimizer.layer_decay, jssl/optim.py).

With config.model.ema_momentum > 0 an EMA of all weights (timm's ModelEmaV2, updated after every step) is kept in
the method state and evaluated next to the model: heads 'model' and 'ema'.

The backbone loads non-strictly (config.init.strict = False): a ViT fine-tuned with fc_norm on the mean patch token
(MAE's global pool) starts fc_norm fresh and leaves the pretrained final norm unused, as mmengine's loader does.
"""
import jax
import jax.numpy as jnp
import optax

from jssl.data.mix import mixup_cutmix
from jssl.evaluate.linear import pooled_feature, top_k_correct
from jssl.methods import base
from jssl.models import build_backbone
from jssl.models.heads import FinetuneHead
from jssl.parts.ema import ema_update


class Method(base.Method):
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    m, b = config.model, config.backbone
    dtype = base.compute_dtype(config)
    self.backbone = build_backbone(b.name, dtype=dtype, **b.get('kwargs', {}))
    self.head = FinetuneHead(m.num_classes, init_std=m.head_init_std, dtype=dtype)
    self.num_classes = m.num_classes
    self.feature = m.get('feature', 'cls')
    self.mixup = dict(mixup_alpha=m.mixup_alpha, cutmix_alpha=m.cutmix_alpha, switch_prob=m.mix_switch_prob,
                      prob=m.mix_prob, label_smoothing=m.label_smoothing)
    self.label_smoothing = m.label_smoothing
    self.ema_momentum = m.get('ema_momentum', 0.)
    self.head_names = ['model', 'ema'] if self.ema_momentum else ['model']

  def apply(self, params, model_state, images, train, rng=None):
    """(logits, new backbone batch_stats or None)."""
    variables = {'params': params['backbone']}
    stats = model_state.get('batch_stats', {}).get('backbone')
    if stats is not None:
      variables['batch_stats'] = stats
    rngs = {'dropout': rng} if rng is not None else {}
    if train and stats is not None:
      out, updates = self.backbone.apply(variables, images, train=True, rngs=rngs, mutable=['batch_stats'])
      stats = updates['batch_stats']
    else:
      out = self.backbone.apply(variables, images, train=train, rngs=rngs)
    logits = self.head.apply({'params': params['head']}, pooled_feature(out, self.feature))
    return logits, stats

  def init(self, rng, batch):
    backbone_rng, head_rng = jax.random.split(rng)
    images = batch['views'][0]
    backbone_vars = self.backbone.init(backbone_rng, images, train=False)
    features = pooled_feature(self.backbone.apply(backbone_vars, images, train=False), self.feature)
    params = {'backbone': backbone_vars['params'], 'head': self.head.init(head_rng, features)['params']}
    model_state = {'batch_stats': {'backbone': backbone_vars['batch_stats']}} if 'batch_stats' in backbone_vars \
        else {}
    method_state = {'ema': {'params': params, 'model_state': model_state}} if self.ema_momentum else {}
    return params, model_state, method_state

  def loss(self, params, model_state, method_state, batch, rng, step):
    mix_rng, drop_rng = jax.random.split(rng)
    images, labels = batch['views'][0], batch['label']
    if self.mixup['mixup_alpha'] > 0 or self.mixup['cutmix_alpha'] > 0:
      images, targets = mixup_cutmix(mix_rng, images, labels, self.num_classes, **self.mixup)
    else:
      targets = optax.smooth_labels(jax.nn.one_hot(labels, self.num_classes), self.label_smoothing)
    logits, stats = self.apply(params, model_state, images, train=True, rng=drop_rng)
    loss = jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))
    if stats is not None:
      model_state = {**model_state, 'batch_stats': {**model_state['batch_stats'], 'backbone': stats}}
    # accuracy against the dominant label of the mixed target (the unmixed label without mixing)
    metrics = {'loss': loss, 'top1/train': 100. * top_k_correct(logits, targets.argmax(-1), 1).mean()}
    if self.ema_momentum:
      # the EMA's BatchNorm statistics follow the model's new ones (timm ModelEmaV2 averages buffers too)
      method_state = {'ema': {**method_state['ema'], 'model_state': ema_update(
          method_state['ema']['model_state'], model_state, self.ema_momentum)}}
    return loss, (metrics, model_state, method_state)

  def after_step(self, params, method_state, step):
    if not self.ema_momentum:
      return method_state
    ema = method_state['ema']
    return {'ema': {**ema, 'params': ema_update(ema['params'], params, self.ema_momentum)}}

  def predict(self, params, model_state, method_state, images):
    out = {'model': self.apply(params, model_state, images, train=False)[0]}
    if self.ema_momentum:
      ema = method_state['ema']
      out['ema'] = self.apply(ema['params'], ema['model_state'], images, train=False)[0]
    return out

  def extract(self, params, model_state, images):
    return pooled_feature(self.backbone.apply(
        {'params': params['backbone'], **({'batch_stats': model_state['batch_stats']['backbone']}
                                          if 'batch_stats' in model_state else {})}, images, train=False),
        self.feature)
