"""Momentum (EMA) targets: BYOL's target network, MoCo's momentum / key encoder (v1, v2, v3; DenseCL, InterCLR),
CAE's teacher.

target <- m * target + (1 - m) * online, with m either constant (MoCo v1/v2, DenseCL, InterCLR: 0.999; CAE) or
following the cosine schedule m(t) = 1 - (1 - m0) * (cos(pi * t / T) + 1) / 2 from m0 to 1 (BYOL, MoCo v3;
MMSelfSup's MomentumUpdateHook, mmpretrain's CosineEMA, solo-learn's BaseMomentumMethod; DINO's teacher).

`EmaTarget` holds the rule; the target itself lives in method_state['target'] as the Flax variables of the target
network, {'params': {part: ...}, 'batch_stats': {part: ...}} (batch_stats only for parts with BatchNorm), its parts
named as the online network's top-level modules ('backbone', 'neck'): module for module mmpretrain's `target_net`
(BYOL), `momentum_encoder` (MoCo v3), `encoder_k` (MoCo v1/v2, DenseCL, InterCLR) or `teacher` (CAE).

BatchNorm statistics follow mmengine's ExponentialMovingAverage(update_buffers=False), which all those references
use: only parameters are averaged; at every update the target's buffers are copied from the online network
(`with_online_stats`), then a train-mode forward of the target (`forward`, or MoCo's shuffle-BN key pass
jssl.models.shuffle_bn.key_forward) moves them by its own batch, as the reference's target buffers move. They never
change a loss (the target normalizes with batch statistics); they keep the target a usable network.

Timing: the references update the target at the start of step t + 1 (before using it) with the online weights
after t + 1 optimizer steps and m(t + 1); `update(target, params, step + 1)` in `after_step` of step t is that
update, so every step sees the reference's target. CAE updates its teacher inside the loss, after using it, with
the weights before the optimizer step (`update(target, params, step)` in `loss`), as its reference does.
"""
import dataclasses

import jax
import jax.numpy as jnp

SCHEDULES = ('constant', 'cosine')


def ema_update(target, online, momentum):
  """Leaf-wise target * momentum + online * (1 - momentum); works on params and BN statistics alike."""
  return jax.tree.map(lambda t, o: t * momentum + o.astype(t.dtype) * (1. - momentum), target, online)


def cosine_momentum(step, total_steps, base_momentum, end_momentum=1.):
  """m(step) rising from base_momentum at step 0 to end_momentum at total_steps."""
  progress = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0., 1.)
  return end_momentum - (end_momentum - base_momentum) * (jnp.cos(jnp.pi * progress) + 1.) / 2.


@dataclasses.dataclass(frozen=True)
class EmaTarget:
  """The momentum target of the online network's top-level modules `parts` (None: all of them).

  base_momentum: m at step 0, the target's own weight; `schedule` 'constant' keeps it, 'cosine' raises it to 1
  over `total_steps` (the run's micro-steps)."""
  base_momentum: float
  parts: tuple | None = None
  schedule: str = 'constant'
  total_steps: int = 0

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"EmaTarget: unknown momentum schedule '{self.schedule}'; valid: {', '.join(SCHEDULES)}")

  def momentum(self, step):
    if self.schedule == 'cosine':
      return cosine_momentum(step, self.total_steps, self.base_momentum)
    return self.base_momentum

  def online(self, params):
    """The online params the target tracks."""
    return params if self.parts is None else {k: params[k] for k in self.parts}

  def online_stats(self, model_state):
    """{'batch_stats': the online BatchNorm statistics of the parts that have some}, or {} without BatchNorm."""
    if 'batch_stats' not in model_state:
      return {}
    stats = model_state['batch_stats']
    return {'batch_stats': stats if self.parts is None else {k: stats[k] for k in self.parts if k in stats}}

  def init(self, params, model_state):
    """The target at step 0: the online network's parts, parameters and BatchNorm statistics."""
    return {'params': self.online(params), **self.online_stats(model_state)}

  def with_online_stats(self, target, model_state):
    """The target with the online network's current BatchNorm statistics (update_buffers=False), to run it."""
    return {**target, **self.online_stats(model_state)}

  def update(self, target, params, step):
    """target params <- m(step) * target params + (1 - m(step)) * online params; statistics unchanged."""
    return {**target, 'params': ema_update(target['params'], self.online(params), self.momentum(step))}

  def forward(self, net, target, *inputs, **kwargs):
    """`net` run with the target's variables in train mode, without gradient: (outputs, the target with the
    BatchNorm statistics the forward moved)."""
    out, stats = net.apply(jax.lax.stop_gradient(target), *inputs, train=True, mutable=['batch_stats'], **kwargs)
    return jax.lax.stop_gradient(out), {**target, **stats}
