"""Momentum (EMA) targets shared by the methods with a teacher network: MoCo, BYOL, DenseCL, CAE, ...

target <- m * target + (1 - m) * online, with m either constant (MoCo v1/v2: 0.999) or following the cosine
schedule m(t) = 1 - (1 - m0) * (cos(pi * t / T) + 1) / 2 from m0 to 1 (BYOL, MoCo v3; MMSelfSup's
MomentumUpdateHook)."""
import jax
import jax.numpy as jnp


def ema_update(target, online, momentum):
  """Leaf-wise target * momentum + online * (1 - momentum); works on params and BN statistics alike."""
  return jax.tree.map(lambda t, o: t * momentum + o.astype(t.dtype) * (1. - momentum), target, online)


def cosine_momentum(step, total_steps, base_momentum, end_momentum=1.):
  """m(step) rising from base_momentum at step 0 to end_momentum at total_steps."""
  progress = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0., 1.)
  return end_momentum - (end_momentum - base_momentum) * (jnp.cos(jnp.pi * progress) + 1.) / 2.
