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

The key encoder (`method_state['target']`, jssl/parts/ema.py: its params and BatchNorm statistics) and its running
statistics. mmengine's ExponentialMovingAverage (update_buffers=False, what MoCo uses) averages only parameters
and *copies* the buffers from the query encoder at every update; the key encoder then runs in train mode, which
moves its running statistics once more by its own (key) batch. So here: the key encoder starts from the query
encoder's running statistics after this step's query forward, and its key forward updates them (under shuffle-BN,
by the mean of the groups' statistics; the reference keeps GPU 0's). They never affect training (the key encoder
always normalizes with batch statistics); they make the key encoder a usable model.

Shuffle-BN. The reference computes keys with per-GPU BatchNorm over a batch shuffled across GPUs, so that the BN
statistics of a key never come from the same images as its query's (otherwise the model "cheats" through intra-batch
statistics). Here it is explicit and independent of the device count (jssl.models.shuffle_bn): the key encoder's
input is the global batch permuted by a permutation from the step's rng, split into `config.model.shuffle_bn_groups`
groups (default 8 = the reference's 8 GPUs x 32), each normalized with its own statistics, outputs un-permuted.
The same run on 1 device or 8 gives the same keys.

The queue (`method_state['queue']`, jssl/parts/queue.py) starts as random unit vectors, as the reference's.
"""
import jax
import jax.numpy as jnp

from jssl import losses
from jssl.methods import base
from jssl.models import build_backbone, shuffle_bn
from jssl.models.necks import LinearNeck, MoCoV2Neck
from jssl.parts import queue as fifo
from jssl.parts.ema import EmaTarget

NECKS = ('linear', 'mocov2')


class Method(base.Method):
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    del total_steps, steps_per_epoch, num_records  # constant momentum, no per-image state
    dtype = base.compute_dtype(config)
    m = config.model
    fifo.check_length(m.queue_len, config.batch_size)
    shuffle_bn.check_groups(m.shuffle_bn_groups, config.batch_size)
    self.temperature = m.temperature
    self.ema = EmaTarget(m.momentum)
    self.queue_len = m.queue_len
    self.groups = m.shuffle_bn_groups
    self.feat_dim = m.neck_out_channels
    self.net = base.BackboneNeck(
        backbone=build_backbone(config.backbone.name, dtype=dtype, **config.backbone.get('kwargs', {})),
        neck=self.neck(m, dtype))

  def neck(self, m, dtype):
    """The projector config.model.neck names: MoCo v1's fc or MoCo v2's fc-ReLU-fc."""
    if m.neck not in NECKS:
      raise ValueError(f"config.model.neck: unknown neck '{m.neck}'; valid: {', '.join(NECKS)}")
    if m.neck == 'linear':
      return LinearNeck(out_channels=m.neck_out_channels, dtype=dtype)
    return MoCoV2Neck(hid_channels=m.neck_hid_channels, out_channels=m.neck_out_channels, dtype=dtype)

  def init(self, rng, batch):
    net_rng, queue_rng = jax.random.split(rng)
    params, model_state = self.init_net(net_rng, batch['views'][0])
    return params, model_state, self.moco_state(params, model_state, queue_rng)

  def moco_state(self, params, model_state, rng):
    """The key encoder, a copy of the query encoder, and a queue of random unit vectors."""
    return {'target': self.ema.init(params, model_state), 'queue': fifo.init(rng, self.queue_len, self.feat_dim)}

  def query_and_key(self, params, model_state, method_state, batch, rng):
    """Steps 1, 2 and 4: (q, normalized keys k, model_state after the query forward, method_state with the key
    encoder's new statistics and the keys in the queue); the loss reads method_state['queue'] before the push."""
    im_q, im_k = batch['views'][:2]
    q, model_state = self.forward(params, model_state, im_q)
    # the key encoder's buffers are the query encoder's (mmengine EMA with update_buffers=False)
    target = self.ema.with_online_stats(method_state['target'], model_state)
    k, key_stats = self.key_forward(target, im_k, rng)
    method_state = {**method_state, 'target': {**target, 'batch_stats': key_stats},
                    'queue': fifo.push(method_state['queue'], k)}
    return q, k, model_state, method_state

  def loss(self, params, model_state, method_state, batch, rng, step):
    q, k, model_state, new_method_state = self.query_and_key(params, model_state, method_state, batch, rng)
    loss = losses.info_nce(q, k, method_state['queue']['keys'], self.temperature)
    return loss, ({'loss': loss}, model_state, new_method_state)

  def key_forward(self, target, images, rng):
    """(normalized keys [B, D] of `images` by the key encoder `target` with shuffle-BN, the key encoder's running
    BN statistics after the key forward: each group's update, averaged over the groups). No gradient flows."""
    k, stats = shuffle_bn.key_forward(self.net, target, images, self.groups, rng)
    return losses.l2_normalize(k.astype(jnp.float32)), stats

  def after_step(self, params, method_state, step):
    return {**method_state, 'target': self.ema.update(method_state['target'], params, step + 1)}
