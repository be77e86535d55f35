"""Linear probing of a frozen pretrained backbone, run by the training loop like a method (config.method =
'linear_probe', configs/eval/linear.py).

The backbone comes from `config.init.backbone` (a jssl workdir or an imported PyTorch backbone) and stays frozen
in eval mode (BatchNorm running statistics, no drop path: MMSelfSup's `frozen_stages` + `norm_eval`); only the
head trains, on labelled random-resized crops. Heads (`config.model.head`):

  'linear'  MoCo protocol: global-average-pooled last stage (a ViT's cls or mean token) -> Linear, N(0, 0.01)
            (mmpretrain `LinearClsHead`); SGD lr 30, momentum 0.9, no weight decay, steps at epochs 60 and 80.
  'mae'     MAE protocol: the cls token after the final norm -> BatchNorm without affine (eps 1e-6) -> Linear,
            truncated normal 0.01 (`ClsBatchNormNeck` + `VisionTransformerClsHead`); LARS lr 0.1 x batch / 256,
            10 warmup epochs, cosine, 90 epochs.
  'multi'   MultiClsHead over ResNet feat1..feat5 (`config.model.in_indices`): per stage MultiPooling ->
            BatchNorm (no affine) -> Linear; one classifier per stage, trained together (summed losses), each
            reported.

`predict` gives the logits the loop evaluates (top-1 / top-5 on the val split, center crop), `extract` the
features kNN monitors read.
"""
import jax
import jax.numpy as jnp
import optax

from jssl.methods import base
from jssl.models import build_backbone
from jssl.models.backbone import map_output
from jssl.models.heads import ClsHead, MAELinprobeHead, MultiClsHead
from jssl.models.necks import global_avg_pool

HEADS = ('linear', 'mae', 'multi')


def pooled_feature(out, feature='cls'):
  """One vector per image from a backbone's output: the last stage map pooled (ResNet, Swin), a ViT's cls
  (`feature`='cls') or mean patch token ('mean') from its tokens, or the vector a pooled ViT already gives."""
  if isinstance(out, (tuple, list)):
    out = out[-1]
  if out.ndim == 4:
    return global_avg_pool(out)
  if out.ndim == 3:
    return out[:, 0] if feature == 'cls' else out[:, 1:].mean(axis=1)
  return out


def top_k_correct(logits, labels, k):
  """Per-sample 1.0 where the label is among the k highest logits."""
  top = jax.lax.top_k(logits, k)[1]
  return (top == labels[:, None]).any(axis=1).astype(jnp.float32)


class Method(base.Method):
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    m, b = config.model, config.backbone
    if m.head not in HEADS:
      raise ValueError(f"config.model.head: unknown head '{m.head}'; valid: {', '.join(HEADS)}")
    dtype = base.compute_dtype(config)
    self.backbone = build_backbone(b.name, dtype=dtype, **b.get('kwargs', {}))
    self.feature = m.get('feature', 'cls')
    self.num_classes = m.num_classes
    if m.head == 'multi':
      if m.get('pool_type', 'adaptive') not in self.backbone.pools:  # MMSelfSup's pools of ResNet-50's maps
        raise ValueError(f"config.model.head: 'multi' needs a ResNet backbone (feat1..feat5), not {b.name}")
      outputs = [map_output(self.backbone, i) for i in m.in_indices]
      if None in outputs:
        valid = ', '.join(str(o.index) for o in self.backbone.feature_info() if o.kind == 'map')
        raise ValueError(f'config.model.in_indices: {tuple(m.in_indices)} are not all outputs of {b.name}; '
                         f'valid: {valid}')
      self.outputs = tuple(o.name for o in outputs)  # feat{i + 1}, in the order of config.model.in_indices
      self.head = MultiClsHead(m.num_classes, tuple(m.in_indices), m.get('pool_type', 'adaptive'),
                               m.get('pool_backbone', 'resnet50'), with_norm=True, norm_affine=False, dtype=dtype)
      self.head_names = list(self.outputs)
    elif m.head == 'mae':
      self.head = MAELinprobeHead(m.num_classes, dtype=dtype)
      self.head_names = ['head']
    else:
      self.head = ClsHead(m.num_classes, init_std=m.get('init_std', 0.01), dtype=dtype)
      self.head_names = ['head']
    self.multi = m.head == 'multi'

  # --- the frozen backbone ----------------------------------------------------------------------------------
  def features(self, variables, images):
    """What the head reads: the 'multi' head's maps (a list), else one vector per image."""
    if self.multi:
      maps = self.backbone.apply(variables, images, train=False, outputs=self.outputs)
      return [maps[name] for name in self.outputs]
    return pooled_feature(self.backbone.apply(variables, images, train=False), self.feature)

  def backbone_out(self, params, model_state, images):
    variables = {'params': params['backbone']}
    stats = model_state.get('batch_stats', {}).get('backbone')
    if stats is not None:
      variables['batch_stats'] = stats
    return jax.lax.stop_gradient(self.features(variables, images))

  def head_apply(self, params, model_state, features, train):
    variables = {'params': params['head']}
    stats = model_state.get('batch_stats', {}).get('head')
    if stats is not None:
      variables['batch_stats'] = stats
    kwargs = {} if isinstance(self.head, ClsHead) else {'train': train}
    if train and 'batch_stats' in variables:
      logits, updates = self.head.apply(variables, features, mutable=['batch_stats'], **kwargs)
      return logits, updates['batch_stats']
    return self.head.apply(variables, features, **kwargs), stats

  # --- the Method interface -----------------------------------------------------------------------------------
  def init(self, rng, batch):
    backbone_rng, head_rng = jax.random.split(rng)
    images = batch['views'][0]
    backbone_vars = self.backbone.init(backbone_rng, images, train=False)
    features = self.features(backbone_vars, images)
    kwargs = {} if isinstance(self.head, ClsHead) else {'train': False}
    head_vars = self.head.init(head_rng, features, **kwargs)
    params = {'backbone': backbone_vars['params'], 'head': head_vars['params']}
    batch_stats = {k: v['batch_stats'] for k, v in (('backbone', backbone_vars), ('head', head_vars))
                   if 'batch_stats' in v}
    return params, ({'batch_stats': batch_stats} if batch_stats else {}), {}

  def loss(self, params, model_state, method_state, batch, rng, step):
    features = self.backbone_out(params, model_state, batch['views'][0])
    logits, head_stats = self.head_apply(params, model_state, features, train=True)
    labels = batch['label']
    scores = logits if self.multi else [logits]
    losses = [jnp.mean(optax.softmax_cross_entropy_with_integer_labels(s.astype(jnp.float32), labels))
              for s in scores]
    metrics = {'loss': sum(losses)}
    for name, s, l in zip(self.head_names, scores, losses):
      metrics[f'top1/{name}'] = 100. * top_k_correct(s, labels, 1).mean()
      if self.multi:
        metrics[f'loss/{name}'] = l
    if head_stats is not None:
      model_state = {**model_state, 'batch_stats': {**model_state['batch_stats'], 'head': head_stats}}
    return metrics['loss'], (metrics, model_state, method_state)

  def predict(self, params, model_state, method_state, images):
    """{head name: logits [B, num_classes]} in eval mode."""
    logits, _ = self.head_apply(params, model_state, self.backbone_out(params, model_state, images), train=False)
    return dict(zip(self.head_names, logits if self.multi else [logits]))

  def extract(self, params, model_state, images):
    out = self.backbone_out(params, model_state, images)
    return global_avg_pool(out[-1]) if self.multi else out


# --- a quick probe on cached features --------------------------------------------------------------------------
def fit_linear_probe(train_features, train_labels, test_features, test_labels, num_classes=None, epochs=100,
                     lr=0.1, batch_size=256, momentum=0.9, weight_decay=0., seed=0):
  """Top-1 / top-5 (%) of a linear classifier trained on fixed features: standardized with the training set's
  mean and std (the MAE protocol's BatchNorm without affine, frozen), zero-initialized, SGD with momentum and a
  cosine lr over `epochs` passes of shuffled mini-batches. What pretraining runs report next to kNN, on the
  features kNN already extracted; the full protocol with augmented crops is the 'linear_probe' evaluator."""
  train_features = jnp.asarray(train_features, jnp.float32)
  test_features = jnp.asarray(test_features, jnp.float32)
  train_labels, test_labels = jnp.asarray(train_labels), jnp.asarray(test_labels)
  num_classes = int(max(train_labels.max(), test_labels.max()) + 1) if num_classes is None else num_classes
  mean, std = train_features.mean(0), train_features.std(0) + 1e-6
  x_train, x_test = (train_features - mean) / std, (test_features - mean) / std
  n, dim = x_train.shape
  batch_size = min(batch_size, n)
  steps_per_epoch = n // batch_size
  tx = optax.sgd(optax.cosine_decay_schedule(lr, epochs * steps_per_epoch), momentum=momentum)
  params = {'w': jnp.zeros((dim, num_classes)), 'b': jnp.zeros((num_classes,))}

  def loss_fn(p, x, y):
    logits = x @ p['w'] + p['b']
    return (jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
            + 0.5 * weight_decay * jnp.sum(p['w'] ** 2))

  def step(carry, ids):
    p, opt_state = carry
    grads = jax.grad(loss_fn)(p, x_train[ids], train_labels[ids])
    updates, opt_state = tx.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), None

  @jax.jit
  def train(p, key):
    orders = jax.vmap(lambda k: jax.random.permutation(k, n)[:steps_per_epoch * batch_size])(
        jax.random.split(key, epochs))
    (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), orders.reshape(-1, batch_size))
    logits = x_test @ p['w'] + p['b']
    k = min(5, num_classes)
    return (top_k_correct(logits, test_labels, 1).mean(), top_k_correct(logits, test_labels, k).mean())

  top1, top5 = train(params, jax.random.PRNGKey(seed))
  return {'top1': 100. * float(top1), 'top5': 100. * float(top5)}
