"""DenseCL (Wang et al. 2021): MoCo v2 with a second, dense contrastive loss between local features.

Query encoder (backbone + DenseCLNeck) on view 1, momentum key encoder (EMA of the query encoder's parameters) on
view 2 with shuffle-BN. The neck gives a global vector (MoCo v2's projector on the pooled map), a vector per location
of the last feature map (1x1 convs) and the mean of those. Two losses at temperature T:

- global: InfoNCE of the query vector against its key and a queue of earlier keys (MoCo v2);
- dense: for every query location, the positive is the key location whose *backbone* feature is most similar
  (argmax of the cosine similarity between the L2-normalized query and key backbone features), the negatives are a
  second queue, fed with the normalized mean of each image's dense key vectors.

loss = (1 - lambda) * global + lambda * dense, with lambda = 0 for the first `loss_lambda_warmup` steps (the
reference's DenseCLHook). Shuffle-BN: the keys' BatchNorm statistics come from `shuffle_bn_groups` groups of a
randomly permuted batch (jssl.models.shuffle_bn), the reference's per-GPU BN over a batch shuffled across 8 GPUs.

method_state: 'target' (the key encoder, jssl/parts/ema.py: EMA params, and BatchNorm statistics copied from the
query encoder and moved by the key forward as MoCo v2's; it always normalizes with batch statistics), 'queue' /
'queue2' (jssl/parts/queue.py: normalized keys [K, D], rows = entries, and their pointers). Order within a step as
in the reference: the key encoder seen by step t is the EMA including the parameters after step t - 1
(after_step), the queues used by step t hold keys up to step t - 1, and step t's keys are enqueued by `loss`
(which returns the new method_state).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl import losses
from jssl.methods import base
from jssl.models import build_backbone, shuffle_bn
from jssl.models.necks import DenseCLNeck
from jssl.parts import queue as fifo
from jssl.parts.ema import EmaTarget


class DenseCLNet(base.BackboneNet):
  """backbone -> DenseCLNeck on the last backbone output. Returns (feature map [B, H, W, C], global [B, D],
  dense [B, H*W, D], dense mean [B, D]); `features` is the pooled last stage (kNN / linear eval / export)."""
  neck: nn.Module

  def __call__(self, images, train: bool = True):
    feature_map = self.backbone(images, train=train)[-1]
    return (feature_map, *self.neck(feature_map, train=train))


def match_dense_keys(q_backbone, k_backbone, k_grid):
  """For every query location the key location of highest backbone cosine similarity, and its dense key vector.

  q_backbone, k_backbone: [B, S, C] backbone features; k_grid: [B, S, D] normalized dense keys.
  Returns (index [B, S] into the key locations, matched keys [B, S, D])."""
  qb = losses.l2_normalize(q_backbone.astype(jnp.float32))
  kb = losses.l2_normalize(k_backbone.astype(jnp.float32))
  index = jnp.argmax(jnp.einsum('bsc,btc->bst', qb, kb), axis=-1)
  return index, jnp.take_along_axis(k_grid, index[..., None], axis=1)


class Method(base.Method):
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    del total_steps, steps_per_epoch, num_records  # constant momentum, no per-image state
    dtype = base.compute_dtype(config)
    m = config.model
    fifo.check_length(m.queue_len, config.batch_size)
    shuffle_bn.check_groups(m.shuffle_bn_groups, config.batch_size)
    self.temperature = m.temperature
    self.queue_len = m.queue_len
    self.feat_dim = m.neck_out_channels
    self.ema = EmaTarget(m.momentum)
    self.loss_lambda = m.loss_lambda
    self.loss_lambda_warmup = m.loss_lambda_warmup
    self.shuffle_bn_groups = m.shuffle_bn_groups
    self.net = DenseCLNet(
        backbone=build_backbone(config.backbone.name, dtype=dtype, **config.backbone.get('kwargs', {})),
        neck=DenseCLNeck(hid_channels=m.neck_hid_channels, out_channels=m.neck_out_channels,
                         num_grid=m.get('num_grid') or None, dtype=dtype))

  def init(self, rng, batch):
    param_rng, queue_rng, queue2_rng = jax.random.split(rng, 3)
    params, model_state = self.init_net(param_rng, batch['views'][0])
    method_state = {'target': self.ema.init(params, model_state),  # the key encoder: a copy of the query encoder
                    'queue': fifo.init(queue_rng, self.queue_len, self.feat_dim),
                    'queue2': fifo.init(queue2_rng, self.queue_len, self.feat_dim)}
    return params, model_state, method_state

  def lambda_at(self, step):
    """The dense loss weight at `step`: 0 during the warmup, then loss_lambda."""
    return jnp.where(jnp.asarray(step) >= self.loss_lambda_warmup, self.loss_lambda, 0.).astype(jnp.float32)

  def loss(self, params, model_state, method_state, batch, rng, step):
    v1, v2 = batch['views'][:2]
    b = v1.shape[0]
    (q_map, q, q_grid, _), model_state = self.forward(params, model_state, v1)
    # the key encoder from the query encoder's running statistics (update_buffers=False), with shuffle-BN
    target = self.ema.with_online_stats(method_state['target'], model_state)
    (k_map, k, k_grid, k2), key_stats = shuffle_bn.key_forward(self.net, target, v2, self.shuffle_bn_groups, rng)
    k = losses.l2_normalize(k.astype(jnp.float32))
    k2 = losses.l2_normalize(k2.astype(jnp.float32))
    k_grid = losses.l2_normalize(k_grid.astype(jnp.float32))

    loss_single = losses.info_nce(q, k, method_state['queue']['keys'], self.temperature)
    _, k_matched = match_dense_keys(jax.lax.stop_gradient(q_map.reshape(b, -1, q_map.shape[-1])),
                                    k_map.reshape(b, -1, k_map.shape[-1]), k_grid)
    loss_dense = losses.info_nce(q_grid.reshape(-1, q_grid.shape[-1]), k_matched.reshape(-1, k_matched.shape[-1]),
                                 method_state['queue2']['keys'], self.temperature)
    lam = self.lambda_at(step)
    loss = (1. - lam) * loss_single + lam * loss_dense

    new_method_state = {**method_state, 'target': {**target, 'batch_stats': key_stats},
                        'queue': fifo.push(method_state['queue'], k), 'queue2': fifo.push(method_state['queue2'], k2)}
    metrics = {'loss': loss, 'loss_single': loss_single, 'loss_dense': loss_dense, 'loss_lambda': lam}
    return loss, (metrics, model_state, new_method_state)

  def after_step(self, params, method_state, step):
    """Momentum update of the key encoder with the parameters after this step's optimizer update."""
    return {**method_state, 'target': self.ema.update(method_state['target'], params, step + 1)}
