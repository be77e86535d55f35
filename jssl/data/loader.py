"""grain loading: per-process sharding, checkpointable iterators, global arrays.

Each JAX process reads its own 1/process_count of the records (grain's
ShardByJaxProcess) in batches of global_batch_size // process_count, and
`to_global` stitches the per-process batches into global jax.Arrays whose
batch dimension is split over all devices of the mesh.

Iterator state is grain's JSON (bytes). To checkpoint it with orbax, pass
`grain.PyGrainCheckpointSave(it)` / `grain.PyGrainCheckpointRestore(it)` as
an item of `ocp.args.Composite` (grain registers their handler with orbax).
"""

from absl import flags
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import grain.python as grain
import numpy as np


def make_loader(source, transforms, global_batch_size, seed, shuffle=True,
                num_epochs=None, worker_count=0, drop_remainder=True,
                shard_by_process=True):
  """A grain.DataLoader yielding this process's part of each global batch.

  Args:
    source: random-access source (`__len__`, `__getitem__`).
    transforms: grain transforms applied per record, before batching.
    global_batch_size: batch size summed over all processes.
    seed: shuffling and random-transform seed.
    shuffle: shuffle the record order (a new order every epoch).
    num_epochs: epochs to read; None repeats forever.
    worker_count: grain worker processes; 0 reads in this process. Each
      worker batches every worker_count-th record of the sampled order and
      batches alternate between workers, so the order differs from
      worker_count=0 (but is still fixed by the seed), and with num_epochs
      set each worker drops its own partial batch. A restored state needs
      the same worker_count.
    drop_remainder: drop the last partial batch of the (finite) stream.
    shard_by_process: each process reads a disjoint 1/process_count of the
      records; False gives every process all records (e.g. for evaluation
      code that wants the same data on every host).
  """
  process_count = jax.process_count()
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'global_batch_size {global_batch_size} must be a '
                     f'positive multiple of the process count {process_count}')
  if shard_by_process:
    # drop_remainder keeps shard sizes equal so processes stay in lockstep.
    shard_options = grain.ShardByJaxProcess(drop_remainder=True)
  else:
    shard_options = grain.NoSharding()
  sampler = grain.IndexSampler(
      num_records=len(source), shard_options=shard_options, shuffle=shuffle,
      num_epochs=num_epochs, seed=seed)
  operations = list(transforms) + [
      grain.Batch(global_batch_size // process_count,
                  drop_remainder=drop_remainder)]
  if worker_count and not flags.FLAGS.is_parsed():
    # grain's worker start-up reads absl flags, which raises when they were
    # never parsed (no absl.app: tests, notebooks); take their defaults.
    flags.FLAGS.mark_as_parsed()
  return grain.DataLoader(data_source=source, sampler=sampler,
                          operations=operations, worker_count=worker_count)


def iterator_state(iterator):
  """The position of a DataLoader iterator, as grain's JSON bytes."""
  return iterator.get_state()


def restore_iterator(loader, state):
  """A fresh iterator over `loader` resuming at `state` (bytes or str).

  grain refuses a state saved with a different sampler, worker_count or
  source (compared by repr), so sources need stable `__repr__`s.
  """
  if isinstance(state, str):
    state = state.encode()
  iterator = iter(loader)
  try:
    iterator.set_state(state)
  except ValueError as e:  # grain's mismatch messages span several lines.
    details = '; '.join(line.strip() for line in str(e).splitlines() if line)
    raise ValueError(f'cannot restore data iterator: {details}') from None
  return iterator


def sum_over_processes(count):
  """A host-local count (e.g. of replaced corrupt images) summed over all JAX processes; every process must call
  it at the same point of the program."""
  if jax.process_count() == 1:
    return int(count)
  from jax.experimental import multihost_utils
  return int(np.sum(multihost_utils.process_allgather(np.int32(count))))


def to_global(batch, mesh, data_axes=('data', 'fsdp')):
  """Host-local numpy pytree -> global jax.Arrays, batch dim over data_axes.

  Every leaf's leading (batch) dimension is split over the mesh axes in
  `data_axes` (by default all devices split the batch); other dimensions are
  replicated. The global batch is made of all processes' local batches (the
  global batch size is the local one times the process count).
  """
  sharding = NamedSharding(mesh, P(tuple(data_axes)))
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      batch)
