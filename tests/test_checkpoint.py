import jax.numpy as jnp
import numpy as np

from jssl import checkpoint


def test_keep_last_n_plus_every_k_and_restore(tmp_path):
  manager = checkpoint.make_manager(str(tmp_path), max_to_keep=2, keep_period=4, async_save=True)
  for step in range(1, 10):
    checkpoint.save(manager, step, {'w': jnp.full((3,), float(step))})
  manager.wait_until_finished()
  assert sorted(manager.all_steps()) == [4, 8, 9]
  abstract = {'w': jnp.zeros((3,))}
  state, step = checkpoint.restore(manager, abstract)
  assert step == 9
  np.testing.assert_array_equal(state['w'], np.full((3,), 9.))
  state, _ = checkpoint.restore(manager, abstract, step=4)
  np.testing.assert_array_equal(state['w'], np.full((3,), 4.))
  manager.close()


def test_restore_params_without_checkpoint_names_directory(tmp_path):
  import pytest
  with pytest.raises(FileNotFoundError, match='no checkpoint in .*checkpoints'):
    checkpoint.restore_params(str(tmp_path), {'w': jnp.zeros(3)})
