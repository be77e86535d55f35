"""MoCo v1 (He et al. 2020) and MoCo v2 (Chen et al. 2020): contrast a query against its key and a queue of keys.

One module serves both (the registry aliases 'mocov1' to this file); they differ only in the config:
v1 a LinearNeck (fc to 128) at temperature 0.07, v2 a MoCoV2Neck (fc-ReLU-fc) at 0.2 and stronger augmentation.
`config.model.neck` picks 'linear' or 'mocov2'.

Per step, for two views of each image (as mmpretrain 1.2's `MoCo`):
  1. q = normalize(neck(backbone(view 1))) by the query encoder (BN over the global batch, trained by gradients);
  2. k = normalize(key_encoder(view 2)) without gradient, with shuffle-BN (below);
  3. loss = InfoNCE over logits [q.k, q.queue] / T, the positive at index 0 (not symmetrized, as the reference);
  4. the global batch's keys replace the oldest rows of the queue (FIFO of K keys, K a multiple of the batch);
  5. after the optimizer step: key encoder params <- m * key params + (1 - m) * query params (m = 0.999, constant).
     The reference does this update at the start of the next step's loss, with the same parameters: equivalent.

The key encoder's BatchNorm running statistics. mmengine's ExponentialMovingAverage (update_buffers=False, what
MoCo uses) averages only parameters and *copies* the buffers from the query encoder at every update; the key encoder
then runs in train mode, which moves its running statistics once more by its own (key) batch. So here: the key
encoder starts from the query encoder's running statistics after this step's query forward, and its key forward
updates them (under shuffle-BN, by the mean of the groups' statistics; the reference keeps GPU 0's). They never
affect training (the key encoder always normalizes with batch statistics); they make the key encoder a usable model.

Shuffle-BN. The reference computes keys with per-GPU BatchNorm over a batch shuffled across GPUs, so that the BN
statistics of a key never come from the same images as its query's (otherwise the model "cheats" through intra-batch
statistics). Here it is explicit and independent of the device count (jssl.models.shuffle_bn): the key encoder's
input is the global batch permuted by a permutation from the step's rng, split into `config.model.shuffle_bn_groups`
groups (default 8 = the reference's 8 GPUs x 32), each normalized with its own statistics, outputs un-permuted.
The same run on 1 device or 8 gives the same keys.

Initial queue: random unit vectors, as the reference (torch.randn then normalized).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl import losses
from jssl.methods.base import BackboneNeck, compute_dtype
from jssl.models import build_backbone
from jssl.models.necks import LinearNeck, MoCoV2Neck
from jssl.models.shuffle_bn import shuffled_group_bn
from jssl.train import queue as fifo
from jssl.train.ema import ema_update

NECKS = ('linear', 'mocov2')


class Method:
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    del total_steps, steps_per_epoch, num_records  # constant momentum, no per-image state
    dtype = compute_dtype(config)
    m = config.model
    if m.neck not in NECKS:
      raise ValueError(f"config.model.neck: unknown neck '{m.neck}'; valid: {', '.join(NECKS)}")
    if m.queue_len % config.batch_size:
      raise ValueError(f'config.model.queue_len ({m.queue_len}) must be a multiple of config.batch_size '
                       f'({config.batch_size})')
    if config.batch_size % m.shuffle_bn_groups:
      raise ValueError(f'config.model.shuffle_bn_groups ({m.shuffle_bn_groups}) must divide config.batch_size '
                       f'({config.batch_size})')
    self.temperature = m.temperature
    self.momentum = m.momentum
    self.queue_len = m.queue_len
    self.groups = m.shuffle_bn_groups
    self.feat_dim = m.neck_out_channels
    neck = (LinearNeck(out_channels=m.neck_out_channels, dtype=dtype) if m.neck == 'linear' else
            MoCoV2Neck(hid_channels=m.neck_hid_channels, out_channels=m.neck_out_channels, dtype=dtype))
    self.net = BackboneNeck(
        backbone=build_backbone(config.backbone.name, dtype=dtype, **config.backbone.get('kwargs', {})), neck=neck)

  def init(self, rng, batch):
    net_rng, queue_rng = jax.random.split(rng)
    variables = self.net.init(net_rng, batch['views'][0], train=False)
    params = variables.pop('params')
    model_state = dict(variables)
    # the key encoder starts as a copy of the query encoder; the queue as random unit vectors
    queue = losses.l2_normalize(jax.random.normal(queue_rng, (self.queue_len, self.feat_dim), jnp.float32))
    method_state = {'target': {'params': params, **model_state}, 'queue': queue,
                    'queue_ptr': jnp.zeros((), jnp.int32)}
    return params, model_state, method_state

  def loss(self, params, model_state, method_state, batch, rng, step):
    im_q, im_k = batch['views'][:2]
    q, new_model_state = self.net.apply({'params': params, **model_state}, im_q, train=True,
                                        mutable=list(model_state))
    new_model_state = dict(new_model_state)
    # the key encoder's buffers are the query encoder's (mmengine EMA with update_buffers=False)
    target = {**method_state['target'], 'batch_stats': new_model_state['batch_stats']}
    k, key_stats = self.key_forward(target, im_k, rng)
    loss = losses.info_nce(q, k, method_state['queue'], self.temperature)
    queue, ptr = fifo.enqueue(method_state['queue'], method_state['queue_ptr'], k)
    method_state = {**method_state, 'target': {**target, 'batch_stats': key_stats}, 'queue': queue,
                    'queue_ptr': ptr}
    return loss, ({'loss': loss}, new_model_state, method_state)

  def key_forward(self, target, images, rng):
    """(normalized keys [B, D] of `images` by the key encoder `target` with shuffle-BN, the key encoder's running
    BN statistics after the key forward: each group's update, averaged over the groups). No gradient flows."""
    target = jax.lax.stop_gradient(target)

    def encode(x):
      k, state = self.net.apply(target, x, train=True, mutable=['batch_stats'])
      # the group's updated statistics repeated per row, so that they travel through the un-permutation;
      # their mean over the batch is the mean over the (equal-sized) groups
      stats = jax.tree.map(lambda s: jnp.broadcast_to(s, (x.shape[0],) + s.shape), state['batch_stats'])
      return k, stats

    k, stats = shuffled_group_bn(encode, images, self.groups, rng)
    return losses.l2_normalize(k.astype(jnp.float32)), jax.tree.map(lambda s: s.mean(axis=0), stats)

  def after_step(self, params, method_state, step):
    target = method_state['target']
    return {**method_state, 'target': {**target, 'params': ema_update(target['params'], params, self.momentum)}}

  def extract(self, params, model_state, images):
    return self.net.apply({'params': params, **model_state}, images, method=BackboneNeck.features)
