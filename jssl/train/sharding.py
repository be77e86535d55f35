"""Device mesh, parameter sharding rules and batch sharding.

One code path from a laptop CPU to a pod: a 2-D mesh ('data', 'fsdp') over all devices. The batch is split
over both axes; parameters are either replicated (plain data parallel) or sharded over 'fsdp' along their
largest divisible dimension (ZeRO-3 style: XLA all-gathers them for the forward pass).
"""
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jssl.config import ConfigError

BATCH_AXES = ('data', 'fsdp')


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
  """A ('data', 'fsdp') mesh; -1 on one axis takes the remaining devices."""
  devices = jax.devices() if devices is None else devices
  n = len(devices)
  if data == -1 and fsdp == -1:
    raise ValueError('config.mesh: at most one of data/fsdp may be -1')
  if data == -1:
    data = n // fsdp
  if fsdp == -1:
    fsdp = n // data
  if data * fsdp != n:
    raise ValueError(f'config.mesh: data={data} x fsdp={fsdp} does not cover the {n} devices')
  return Mesh(np.asarray(devices).reshape(data, fsdp), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dim over every device, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape, fsdp_size: int, min_size: int = 2**14) -> P:
  """Shard the largest dimension divisible by the fsdp axis; small arrays stay replicated."""
  if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for dim in np.argsort(shape)[::-1]:
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = 'fsdp'
      return P(*spec)
  return P()


def param_shardings(tree, mesh: Mesh, mode: str):
  """NamedShardings for a pytree of arrays (or ShapeDtypeStructs) by `config.param_sharding`."""
  if mode == 'replicate':
    return jax.tree.map(lambda _: replicated(mesh), tree)
  if mode == 'fsdp':
    size = mesh.shape['fsdp']
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, size)), tree)
  raise ValueError(f"config.param_sharding: unknown mode '{mode}'; valid: fsdp, replicate")


def check_divisible(field, batch_size, devices):
  """A global batch is split evenly over every device (and so over the processes, which read equal shares)."""
  multiple = math.lcm(devices, jax.process_count())
  if batch_size % multiple:
    lower = batch_size // multiple * multiple
    nearest = ' or '.join(str(b) for b in (lower, lower + multiple) if b > 0)
    procs = f' of {jax.process_count()} processes' if jax.process_count() > 1 else ''
    raise ConfigError(f'{field}: {batch_size} does not split evenly over the {devices} devices{procs}; nearest '
                      f'valid: {nearest}')
