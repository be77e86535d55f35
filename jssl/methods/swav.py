"""SwAV (Caron et al. 2020): online clustering with swapped prediction over multi-crop views.

Each image gives 2 global crops (224 px) and several small crops (96 px). The backbone runs once per resolution
group (consecutive crops of one size are batched together, so BatchNorm statistics are per group); the pooled
features of all crops are concatenated and go through the SwAVNeck (fc-BN-ReLU-fc, L2-normalized, BN over all
crops) to embeddings z. Scores against K prototypes (a bias-free linear layer whose columns are L2-normalized
before every forward) are z . c_k. For each global crop ("crops_for_assign") the Sinkhorn-Knopp algorithm turns
the scores of the batch (plus, once it is full, a queue of earlier embeddings scored against the current
prototypes) into equipartitioned soft codes q; every other crop predicts those codes through a softmax of its
scores at temperature T (swapped prediction, cross-entropy). The loss is averaged over the predicting crops and
over the assigned crops.

- Sinkhorn runs over the global batch (jit over global arrays: the sums are the all-reduces of the paper's
  `distributed_sinkhorn`).
- The queue (`queue_length` embeddings per assigned crop, reference 3840) exists from epoch `epoch_queue_starts`
  on: from then every step shifts the batch's embeddings in (newest first), and it is used once its last row is
  filled, exactly the reference's `SwAVHook` + `SwAVLoss` (`queue[i, -1] != 0`). Only the current batch's codes are
  kept. The queue length is rounded down to a multiple of the global batch, as the reference does.
- Prototypes are frozen for the first `freeze_prototypes_iters` steps (reference: `requires_grad=False`, so its
  LARS skips them: no update, no weight decay, no momentum).

Differences from MMSelfSup and why:
- Prototype normalization. The reference overwrites its prototype weights with their normalized copy at every
  forward; the gradient is taken w.r.t. the normalized weights and applied to them. jssl cannot rewrite params
  from inside the loss, so the forward uses normalize(W) with the gradient passed straight through to W (the same
  gradient as the reference's) and the optimizer updates W itself. Prototypes are initialized normalized (the
  reference's state after its first normalization), so W stays unit-length up to the second-order drift of each
  step: the forward is the reference's, the optimizer sees |W| instead of exactly 1 (LARS is scale-invariant
  here, so this changes only that drift).
- Freezing. A zero gradient is not enough with LARS/SGD: the coupled weight decay (g + wd W) alone would still
  move (and under LARS' trust ratio shrink) the prototypes every step. While frozen, the prototype gradient is
  therefore set to exactly -wd * W, so that the optimizer's g + wd W is 0 and its update and momentum stay 0 (the
  prototypes are bitwise unchanged; tested through the real train step). This relies on the optimizer adding
  `weight_decay * W` to the gradient first (jssl's lars and sgd); with gradient clipping that actually clips, with
  AdamW's decoupled decay, or if XLA fuses `g + wd * W` into an FMA on some backend, the frozen prototypes move by
  the decay (or by rounding residues) instead.
- The reference all-reduces Sinkhorn's row sums only inside its zero-row guard (an indentation slip against the
  paper's code), so on several GPUs its row normalization is per GPU; here it is global, as the paper's.
- The queue is one global [L, D] array per assigned crop instead of one [L / world_size, D] per GPU: it holds the
  same embeddings (Sinkhorn is invariant to the order of samples), and is checkpointed with the train state
  instead of a queue.pth file.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl import losses
from jssl.methods import base
from jssl.models import build_backbone
from jssl.models.necks import SwAVNeck, normalized_prototypes_init
from jssl.parts.sinkhorn import sinkhorn_knopp


class SwAVNet(base.BackboneNet):
  """backbone (once per resolution group) -> SwAVNeck over all crops -> prototype scores.
  Params: {'backbone', 'neck', 'prototypes': {'kernel' [D, K]}}."""
  neck: nn.Module
  num_prototypes: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, groups, train: bool = True):
    z = self.neck([self.backbone(g, train=train)[-1] for g in groups], train=train)
    scores = nn.Dense(self.num_prototypes, use_bias=False, kernel_init=normalized_prototypes_init,
                      dtype=self.dtype, name='prototypes')(z)
    return z, scores


def resolution_groups(views):
  """Consecutive views of the same size concatenated along the batch (the reference's `unique_consecutive`)."""
  groups = []
  for v in views:
    if groups and groups[-1][-1].shape[1:] == v.shape[1:]:
      groups[-1].append(v)
    else:
      groups.append([v])
  return [jnp.concatenate(g) if len(g) > 1 else g[0] for g in groups]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def unit_prototypes(kernel, frozen, frozen_decay):
  """The prototypes (columns of `kernel` [D, K]) scaled to unit length, as torch's normalize (eps 1e-12).

  Backward: the gradient w.r.t. the normalized prototypes goes to `kernel` unchanged (the reference takes it at
  the normalized weights), or, while `frozen`, -frozen_decay * kernel: it cancels the optimizer's coupled weight
  decay, so that the frozen prototypes get a zero update (see the module docstring)."""
  del frozen, frozen_decay
  return kernel / jnp.maximum(jnp.linalg.norm(kernel, axis=0, keepdims=True), 1e-12)


def _unit_prototypes_fwd(kernel, frozen, frozen_decay):
  return unit_prototypes(kernel, frozen, frozen_decay), (kernel, frozen)


def _unit_prototypes_bwd(frozen_decay, residuals, g):
  kernel, frozen = residuals
  return jnp.where(frozen, -(frozen_decay * kernel), g), None


unit_prototypes.defvjp(_unit_prototypes_fwd, _unit_prototypes_bwd)


def coupled_weight_decay(opt_cfg):
  """The weight decay jssl's optimizer adds to the prototypes' gradient (lars, sgd); 0 when it has none."""
  if opt_cfg.name not in ('lars', 'sgd'):
    return 0.
  if any(name == 'prototypes' for name in opt_cfg.get('no_decay_names', ())):
    return 0.
  return float(opt_cfg.get('weight_decay', 0.))


class Method(base.Method):
  def __init__(self, config, total_steps=0, steps_per_epoch=0, num_records=0):
    del total_steps, num_records  # epochs for the queue start come from steps_per_epoch
    dtype = base.compute_dtype(config)
    m = config.model
    self.temperature = m.temperature
    self.epsilon = m.epsilon
    self.sinkhorn_iterations = m.sinkhorn_iterations
    self.crops_for_assign = tuple(m.crops_for_assign)
    self.feat_dim = m.neck_out_channels
    # the reference: queue_length -= queue_length % global batch (a shift of whole batches)
    self.queue_length = m.queue_length - m.queue_length % config.batch_size
    self.queue_start_step = int(m.epoch_queue_starts * steps_per_epoch)
    self.freeze_prototypes_iters = m.freeze_prototypes_iters
    self.frozen_decay = coupled_weight_decay(config.optimizer)
    self.net = SwAVNet(
        backbone=build_backbone(config.backbone.name, dtype=dtype, **config.backbone.get('kwargs', {})),
        neck=SwAVNeck(hid_channels=m.neck_hid_channels, out_channels=m.neck_out_channels, dtype=dtype),
        num_prototypes=m.num_prototypes, dtype=dtype)

  def init(self, rng, batch):
    params, model_state = self.init_net(rng, resolution_groups(batch['views']))
    method_state = {}
    if self.queue_length:
      method_state['queue'] = jnp.zeros((len(self.crops_for_assign), self.queue_length, self.feat_dim), jnp.float32)
    return params, model_state, method_state

  def codes(self, scores, z, prototypes, queue, step):
    """Sinkhorn codes of one assigned crop [B, K] and the queue after this step (None without a queue).
    scores/z: that crop's scores [B, K] and embeddings [B, D]; prototypes: normalized [D, K], no gradient."""
    sinkhorn = functools.partial(sinkhorn_knopp, num_iters=self.sinkhorn_iterations, epsilon=self.epsilon)
    scores = jax.lax.stop_gradient(scores)
    if queue is None:
      return sinkhorn(scores), None
    bs = scores.shape[0]
    full = jnp.any(queue[-1] != 0)  # the reference uses the queue once its last row has been written
    q = jax.lax.cond(full, lambda: sinkhorn(jnp.concatenate([queue @ prototypes, scores]))[-bs:],
                     lambda: sinkhorn(scores))
    active = step >= self.queue_start_step
    shifted = jnp.concatenate([jax.lax.stop_gradient(z), queue[:-bs]])
    return q, jnp.where(active, shifted, queue)

  def loss(self, params, model_state, method_state, batch, rng, step):
    views = batch['views']
    bs, n = views[0].shape[0], len(views)
    frozen = step < self.freeze_prototypes_iters
    prototypes = unit_prototypes(params['prototypes']['kernel'], frozen, self.frozen_decay)
    (z, scores), model_state = self.forward({**params, 'prototypes': {'kernel': prototypes}}, model_state,
                                            resolution_groups(views))
    z = z.astype(jnp.float32).reshape(n, bs, -1)  # crop-major, as the views were concatenated
    scores = scores.astype(jnp.float32).reshape(n, bs, -1)
    fixed_prototypes = jax.lax.stop_gradient(prototypes).astype(jnp.float32)
    codes, queues = [], []
    for i, crop in enumerate(self.crops_for_assign):
      queue = method_state['queue'][i] if self.queue_length else None
      q, queue = self.codes(scores[crop], z[crop], fixed_prototypes, queue, step)
      codes.append(q)
      queues.append(queue)
    loss = losses.swapped_prediction_loss(scores, jnp.stack(codes), self.crops_for_assign, self.temperature)
    metrics = {'loss': loss}
    if self.queue_length:
      metrics['queue_in_use'] = jnp.mean(jnp.stack([jnp.any(method_state['queue'][i][-1] != 0)
                                                    for i in range(len(queues))]).astype(jnp.float32))
      method_state = {**method_state, 'queue': jnp.stack(queues)}
    return loss, (metrics, model_state, method_state)  # the queue moves here, with the embeddings it computed
