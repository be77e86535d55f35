"""NPID (Wu et al. 2018): non-parametric instance discrimination against a memory bank of every image's feature.

Per step, for one augmented view of each image i (its dataset index from batch['index']):
  1. f_i = normalize(LinearNeck(backbone(view)))                    (128-d, the bank's rows are unit vectors too)
  2. positive: v_i . f_i with v_i = memory[i] (the bank before this step's update);
     negatives: v_j . f_i for `neg_num` indices j drawn uniformly with replacement from the whole bank, per image
     (the reference's AliasMethod over equal weights; here jax.random.randint with the step's rng). As the
     reference's default (ensure_neg=False) a draw may hit i itself; config.model.ensure_neg=True draws from the
     other N - 1 rows only.
  3. loss = cross-entropy of softmax([v_i.f_i, v_j.f_i ...] / T) with the positive at index 0 (the reference's
     ContrastiveHead, T = 0.07), mean over the global batch;
  4. memory[i] <- normalize((1 - m) * memory[i] + m * f_i), m = 0.5 (no gradient). Duplicate indices within one
     global batch update their row once, from the mean of their features (jssl/parts/memory.py).

The bank is method_state['memory'] ({'features': [num_records, 128] float32}), initialized with random unit
vectors; num_records is the training set's size (Trainer passes it to Method). Backbone BN runs over the global batch (the reference's SyncBN).
"""
import jax
import jax.numpy as jnp

from jssl import losses
from jssl.methods import base
from jssl.models import build_backbone
from jssl.models.necks import LinearNeck
from jssl.parts import memory


class Method(base.Method):
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    del total_steps, steps_per_epoch  # no schedule inside the method
    dtype = base.compute_dtype(config)
    m = config.model
    self.num_records = num_records
    self.feat_dim = m.neck_out_channels
    self.temperature = m.temperature
    self.neg_num = m.neg_num
    self.memory_momentum = m.memory_momentum
    self.ensure_neg = m.get('ensure_neg', False)
    self.net = base.BackboneNeck(
        backbone=build_backbone(config.backbone.name, dtype=dtype, **config.backbone.get('kwargs', {})),
        neck=LinearNeck(out_channels=m.neck_out_channels, dtype=dtype))

  def init(self, rng, batch):
    net_rng, bank_rng = jax.random.split(rng)
    params, model_state = self.init_net(net_rng, batch['views'][0])
    return params, model_state, {'memory': memory.init(bank_rng, self.num_records, self.feat_dim)}

  def negatives(self, rng, index):
    """[B, neg_num] bank indices of the negatives of each image."""
    exclude = index[:, None] if self.ensure_neg else None
    return memory.sample_uniform(rng, (index.shape[0], self.neg_num), self.num_records, exclude)

  def loss(self, params, model_state, method_state, batch, rng, step):
    index = batch['index'].astype(jnp.int32)
    f, model_state = self.forward(params, model_state, batch['views'][0])
    f = losses.l2_normalize(f.astype(jnp.float32))
    bank = method_state['memory']['features']
    pos = jnp.sum(bank[index] * f, axis=-1)
    neg = jnp.einsum('bkd,bd->bk', bank[self.negatives(rng, index)], f)
    loss = losses.contrastive_head_loss(pos, neg, self.temperature)
    new_bank, _ = memory.update(method_state['memory'], index, f, self.memory_momentum)
    return loss, ({'loss': loss}, model_state, {**method_state, 'memory': new_bank})
