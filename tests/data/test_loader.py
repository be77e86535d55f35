"""grain loader: epochs, seeds, resumable state (direct and via orbax),
worker processes, and global arrays on 8 simulated CPU devices."""

import os
import subprocess
import sys
import textwrap

import grain.python as grain
import numpy as np
import pytest

from jssl.data import loader

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


class CountingSource:
  """Record i is {'index': i, 'x': [i, i]}; a stable repr lets grain restore."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, index):
    return {'index': np.int64(index), 'x': np.full((2,), index, np.float32)}

  def __repr__(self):
    return f'CountingSource({self.n})'


class AddDouble(grain.MapTransform):

  def map(self, record):
    return {**record, 'double': record['x'] * 2}


def _indices(batches):
  return [int(i) for batch in batches for i in batch['index']]


def test_one_epoch_covers_every_record_once():
  data = loader.make_loader(CountingSource(22), [AddDouble()],
                            global_batch_size=4, seed=0, num_epochs=1)
  batches = list(data)
  assert len(batches) == 5  # 22 // 4; drop_remainder drops the last 2.
  for batch in batches:
    assert batch['index'].shape == (4,) and batch['index'].dtype == np.int64
    assert batch['x'].shape == (4, 2)
    np.testing.assert_array_equal(batch['double'], batch['x'] * 2)
  data = loader.make_loader(CountingSource(20), [], global_batch_size=4,
                            seed=0, num_epochs=1)
  indices = _indices(data)
  assert sorted(indices) == list(range(20))
  assert indices != list(range(20))  # Shuffled.


def test_keep_remainder_and_no_shuffle():
  data = loader.make_loader(CountingSource(10), [], global_batch_size=4,
                            seed=0, shuffle=False, num_epochs=1,
                            drop_remainder=False, shard_by_process=False)
  batches = list(data)
  assert [len(b['index']) for b in batches] == [4, 4, 2]
  assert _indices(batches) == list(range(10))


def test_seed_fixes_order_and_epochs_reshuffle():
  def first_epochs(seed):
    data = loader.make_loader(CountingSource(16), [], global_batch_size=8,
                              seed=seed, num_epochs=2)
    return _indices(data)

  order = first_epochs(0)
  assert order == first_epochs(0)
  assert order != first_epochs(1)
  assert sorted(order[:16]) == sorted(order[16:]) == list(range(16))
  assert order[:16] != order[16:]


def test_batch_size_must_divide_by_process_count(monkeypatch):
  monkeypatch.setattr(loader.jax, 'process_count', lambda: 4)
  with pytest.raises(ValueError, match='global_batch_size 6 .* count 4'):
    loader.make_loader(CountingSource(8), [], global_batch_size=6, seed=0)


def _make(**kwargs):
  return loader.make_loader(CountingSource(50), [AddDouble()],
                            global_batch_size=4, seed=3, **kwargs)


def test_iterator_state_restore_resumes_exactly():
  iterator = iter(_make())
  for _ in range(3):
    next(iterator)
  state = loader.iterator_state(iterator)
  expected = [next(iterator) for _ in range(15)]  # Crosses an epoch boundary.
  for saved in (state, state.decode()):
    resumed = loader.restore_iterator(_make(), saved)
    got = [next(resumed) for _ in range(15)]
    assert _indices(got) == _indices(expected)


def test_restore_with_a_different_loader_is_one_line_error():
  iterator = iter(_make())
  next(iterator)
  state = loader.iterator_state(iterator)
  other = loader.make_loader(CountingSource(51), [], global_batch_size=4,
                             seed=3)
  with pytest.raises(ValueError, match='cannot restore data iterator') as e:
    loader.restore_iterator(other, state)
  assert '\n' not in str(e.value)


def test_orbax_checkpoint_manager_resumes_exactly(tmp_path):
  ocp = pytest.importorskip('orbax.checkpoint')
  iterator = iter(_make())
  for _ in range(5):
    next(iterator)
  step_value = np.arange(3.0)
  with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
    manager.save(5, args=ocp.args.Composite(
        data_iter=grain.PyGrainCheckpointSave(iterator),
        state=ocp.args.StandardSave({'w': step_value})))
    manager.wait_until_finished()
  expected = [next(iterator) for _ in range(4)]

  fresh = iter(_make())
  with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
    assert manager.latest_step() == 5
    restored = manager.restore(5, args=ocp.args.Composite(
        data_iter=grain.PyGrainCheckpointRestore(fresh),
        state=ocp.args.StandardRestore({'w': np.zeros(3)})))
  np.testing.assert_array_equal(restored['state']['w'], step_value)
  assert restored['data_iter'] is fresh
  assert _indices(next(fresh) for _ in range(4)) == _indices(expected)


def test_worker_processes():
  # Worker start-up (spawn, imports) costs ~4 s on 2 cores: one loader only.
  data = loader.make_loader(CountingSource(16), [AddDouble()],
                            global_batch_size=4, seed=0, num_epochs=1,
                            worker_count=2)
  batches = list(data)
  assert [len(b['index']) for b in batches] == [4] * 4
  assert sorted(_indices(batches)) == list(range(16))
  for batch in batches:
    np.testing.assert_array_equal(batch['double'], batch['x'] * 2)
  # grain's worker semantics: worker w batches records w, w + 2, ... of the
  # seeded order, and batches alternate between workers.
  order = _indices(loader.make_loader(CountingSource(16), [],
                                      global_batch_size=4, seed=0,
                                      num_epochs=1))
  by_worker = [order[0::2], order[1::2]]
  expected = [by_worker[b % 2][b // 2 * 4:b // 2 * 4 + 4] for b in range(4)]
  assert [list(b['index']) for b in batches] == expected


_TO_GLOBAL_SCRIPT = textwrap.dedent("""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jssl.data import loader

    assert jax.device_count() == 8, jax.devices()
    batch = {'image': np.arange(16 * 3 * 2, dtype=np.float32).reshape(16, 3, 2),
             'label': np.arange(16, dtype=np.int32)}
    for shape in ((8, 1), (4, 2), (1, 8)):
      mesh = Mesh(np.array(jax.devices()).reshape(shape), ('data', 'fsdp'))
      out = loader.to_global(batch, mesh)
      for key, x in out.items():
        assert isinstance(x, jax.Array), type(x)
        assert x.shape == batch[key].shape, (key, x.shape)
        assert x.sharding == NamedSharding(mesh, P(('data', 'fsdp'))), x.sharding
        assert len(x.addressable_shards) == 8
        for shard in x.addressable_shards:
          # Every device holds 2 of the 16 examples, all other dims whole.
          assert shard.data.shape == (2,) + batch[key].shape[1:]
          np.testing.assert_array_equal(shard.data, batch[key][shard.index])
        np.testing.assert_array_equal(np.asarray(x), batch[key])

    # Only the 'data' axis: the batch is replicated over 'fsdp'.
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ('data', 'fsdp'))
    x = loader.to_global(batch, mesh, data_axes=('data',))['label']
    assert {s.data.shape for s in x.addressable_shards} == {(4,)}
    print('ok')
    """)


def test_to_global_shards_batch_over_8_cpu_devices():
  # A fresh process: this one may already have initialized jax with 1 device.
  env = {**os.environ,
         'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'JAX_PLATFORMS': 'cpu',
         'PYTHONPATH': os.pathsep.join(
             [REPO_ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p])}
  result = subprocess.run([sys.executable, '-c', _TO_GLOBAL_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith('ok')
