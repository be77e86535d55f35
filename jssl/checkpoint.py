"""Checkpoints: an orbax CheckpointManager saving the TrainState (sharded, async) together with the grain
data-iterator position and a checksum of every array, keeping the last N plus every K-th step, and resuming from
the latest step that reads back and matches its checksums: a step whose files are truncated, missing or damaged (a
crash or a full disk while writing, a file deleted by hand, flipped bits) is moved to
WORKDIR/checkpoints_corrupt/<step> with a warning, and the one before it is restored. An unfinished write left by a
run killed while saving is reported and removed when training opens the workdir (see docs/staying_up.md).
`restore_parts` reads only some of a step's arrays (a backbone: not the optimizer state), as they were saved."""
import asyncio
import contextlib
import os
import sys

import grain.python as grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

# The checksums' algorithm (saved with them): a change of it must not make older checkpoints look damaged
CHECKSUM_FORMAT = 'jssl-fmix32x2-v1'


class CheckpointError(FileNotFoundError):
  """No checkpoint of a workdir that has some could be restored (a FileNotFoundError, so that the tools that report
  a workdir without checkpoints in one line report this too)."""


def make_manager(workdir: str, max_to_keep: int = 3, keep_period: int | None = None,
                 async_save: bool = True, read_only: bool = False) -> ocp.CheckpointManager:
  """The workdir's checkpoints. A training run's manager (not `read_only`) reports and removes what a run killed
  while saving left behind; `read_only` (evaluation, export) leaves the workdir as it is: a save in progress of a
  running training looks the same."""
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  unfinished = []
  if not read_only and jax.process_index() == 0:  # once, before anything reads the directory
    unfinished = [p.get() for p in ocp.path.step.all_temporary_paths(directory)]
  # (not orbax's read_only option: it logs a warning at every start; this manager only restores)
  options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else max_to_keep,
                                         keep_period=None if read_only else keep_period,
                                         enable_async_checkpointing=async_save, create=not read_only)
  manager = ocp.CheckpointManager(directory, options=options, item_names=('state', 'data_iter', 'checksums'))
  if unfinished:
    # orbax lists only complete steps, and would remove such a directory only when it saves the same step again
    latest = manager.latest_step()
    where = (f'the run resumes from the latest complete checkpoint, step {latest}' if latest is not None else
             'no complete checkpoint exists, so the run starts from step 0')
    steps = ', '.join(str(ocp.path.step.step_from_checkpoint_name(p.name)) for p in unfinished)
    print(f'jssl: warning: {", ".join(map(str, unfinished))}: an unfinished write of step {steps}, left by a run '
          f'killed while saving it; it is not used and is removed; {where}', file=sys.stderr, flush=True)
    for path in unfinished:
      path.rmtree()
  return manager


# --- checksums ----------------------------------------------------------------------------------------------------
# One per array, of its global value: independent of how it is sharded (1 or 8 devices, replicated or FSDP, another
# mesh at restore), computed on the devices in one jit. Each 32-bit word w at flat position i adds fmix(w ^ fmix(i))
# to a sum mod 2^32 (murmur3's finalizer fmix is a bijection, so a change of any one word, e.g. one flipped bit,
# always changes the sum; integer sums are exact in any order, so sharding cannot change them); two such sums with
# other constants make 64 bits against multi-word damage.
_MIXERS = ((0x85ebca6b, 0xc2b2ae35, 0x9e3779b9), (0x7feb352d, 0x846ca68b, 0x632be5ab))


def _fmix(h, c1, c2):
  h = h ^ (h >> 16)
  h = h * np.uint32(c1)
  h = h ^ (h >> 13)
  h = h * np.uint32(c2)
  return h ^ (h >> 16)


def _words(x):
  """The array's bit pattern as uint32 (8-byte types: two words per element, a trailing axis of 2)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  if x.dtype.itemsize < 4:
    return jax.lax.bitcast_convert_type(x, jnp.dtype(f'uint{8 * x.dtype.itemsize}')).astype(jnp.uint32)
  return jax.lax.bitcast_convert_type(x, jnp.uint32)


def _array_checksum(x):
  words = _words(jnp.asarray(x))
  # the flat (row-major) position from per-axis iotas: no reshape, so a sharded array is not gathered
  position, stride = jnp.zeros(words.shape, jnp.uint32), 1
  for axis in reversed(range(words.ndim)):
    position = position + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * np.uint32(stride % 2**32)
    stride *= words.shape[axis]
  mixed = tuple(_fmix(words ^ _fmix(position + np.uint32(c3), c1, c2), c1, c2) for c1, c2, c3 in _MIXERS)
  # both sums in one reduction: the array is read once (two jnp.sum would read it twice, and more)
  sums = jax.lax.reduce(mixed, (np.uint32(0),) * 2, lambda a, b: (a[0] + b[0], a[1] + b[1]),
                        tuple(range(words.ndim)))
  return jnp.stack(sums)


@jax.jit
def _checksums_jit(leaves):
  return [_array_checksum(x) for x in leaves]


def checksums(tree) -> dict:
  """{array path ('opt_state/0/mu/backbone/conv1/kernel'): 16 hex digits} of a pytree of (possibly sharded)
  arrays: one jit, one transfer of 8 bytes per array to the host."""
  paths, leaves = zip(*jax.tree_util.tree_flatten_with_path(tree)[0]) if jax.tree.leaves(tree) else ((), ())
  values = jax.device_get(_checksums_jit(list(leaves)))
  return {jax.tree_util.keystr(p, simple=True, separator='/'): f'{int(v[0]):08x}{int(v[1]):08x}'
          for p, v in zip(paths, values)}


def _mismatch(saved, state, partial=False):
  """None, or what does not match in `state` the checksums saved with it (`partial`: `state` holds some of the
  saved arrays)."""
  if saved.get('format') != CHECKSUM_FORMAT:
    return f"checksums of an unknown format {saved.get('format')!r}"
  expected, actual = saved['arrays'], checksums(state)
  bad = [k for k in actual if expected.get(k) != actual[k]] + \
      ([] if partial else [k for k in expected if k not in actual])
  if not bad:
    return None
  more = f' (and {len(bad) - 1} more arrays)' if len(bad) > 1 else ''
  return f'checksum mismatch: {bad[0]}{more} differs from what was saved'


def save(manager: ocp.CheckpointManager, step: int, state, data_iter=None, force=False) -> bool:
  items = {'state': ocp.args.StandardSave(state),
           'checksums': ocp.args.JsonSave({'format': CHECKSUM_FORMAT, 'arrays': checksums(state)})}
  if data_iter is not None:
    items['data_iter'] = grain.PyGrainCheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def _restore_checked(manager, step, abstract_state, data_iter=None, partial=False):
  """(state, None, verified) or (None, why not, verified): the step's state restored (and the data iterator's
  position, in place) and checked against the checksums saved with it, the same on every process; `verified` is
  False for a step saved without checksums (by a jssl before them): it restores, unchecked. `partial`: only the
  arrays of `abstract_state` (a subtree of the saved state's nested dicts) are read, and checked."""
  if partial:
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract_state)
    items = {'state': ocp.args.PyTreeRestore(abstract_state, restore_args=restore_args, partial_restore=True)}
  else:
    items = {'state': ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    items['data_iter'] = grain.PyGrainCheckpointRestore(data_iter)
  verifiable = (epath.Path(str(manager.directory)) / str(step) / 'checksums').exists()
  if verifiable:
    items['checksums'] = ocp.args.JsonRestore()
  restored, error = _try_restore(manager, step, ocp.args.Composite(**items))
  if jax.process_count() > 1:  # all processes resume from the same step, or the collectives would not match
    from jax.experimental import multihost_utils
    failed_on = multihost_utils.process_allgather(np.int32(restored is None))
    if failed_on.any() and error is None:
      error = f'process {int(np.argmax(failed_on))} could not read it'
  if error is None and verifiable:  # a global computation: the same answer on every process
    error = _mismatch(restored['checksums'], restored['state'], partial)
  return (None, error, verifiable) if error is not None else (restored['state'], None, verifiable)


def _warn_unverified(manager, step):
  print(f'jssl: warning: checkpoint {manager.directory / str(step)} has no checksums (saved before jssl wrote '
        f'them): restored without verifying it', file=sys.stderr, flush=True)


def restore(manager: ocp.CheckpointManager, abstract_state, data_iter=None, step: int | None = None):
  """Restores into `abstract_state` (ShapeDtypeStructs with shardings) and, in place, the data iterator: `step`,
  or else the latest step that reads back and matches its checksums on every process, moving the ones after it
  aside (see module doc)."""
  if step is not None:
    return _restore_step(manager, step, abstract_state, data_iter), step
  failed = []
  for step in sorted(manager.all_steps(), reverse=True):
    state, error, verified = _restore_checked(manager, step, abstract_state, data_iter)
    if error is None:
      for bad_step, bad_error in failed:  # only once an older step restores: see below
        _set_aside(manager, bad_step, bad_error)
      if not verified:
        _warn_unverified(manager, step)
      return state, step
    failed.append((step, error))
  # Nothing restores: rather a config that does not match the run (another model or optimizer) than every step
  # corrupt, so nothing is moved; the first error says which
  step, error = failed[0]
  raise CheckpointError(f'no checkpoint in {manager.directory} could be restored into this config (step {step}: '
                        f'{error}); a run resumes only with the config it was started with; nothing was moved')


def _restore_step(manager, step, abstract_state, data_iter=None):
  """Exactly `step`, checked (a CheckpointError where it does not read back or match its checksums)."""
  state, error, verified = _restore_checked(manager, step, abstract_state, data_iter)
  if error is not None:
    raise CheckpointError(f'checkpoint {manager.directory / str(step)} could not be restored ({error})')
  if not verified:
    _warn_unverified(manager, step)
  return state


def check_latest(manager: ocp.CheckpointManager, abstract_state) -> str:
  """What the newest checkpoint is, as a fact: read back into `abstract_state` and checked against its checksums
  (and, where it is not intact, the newest that is), in a sentence for an error message. Nothing is moved. For
  the end of a failed run: it reads a whole state into the devices' memory, step by step."""
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return f'no checkpoint was written in {manager.directory}'
  latest = f'the last checkpoint (step {steps[0]}) in {manager.directory}'
  damage = None
  for step in steps:
    state, error, verified = _restore_checked(manager, step, abstract_state)
    del state  # only the answer is needed
    if error is not None:
      damage = damage or error
      continue
    fact = 'is intact (read back, its arrays match their checksums)' if verified else \
        'reads back but cannot be verified (saved without checksums)'
    if step == steps[0]:
      return f'{latest} {fact}'
    return (f'{latest} is damaged ({damage}); step {step} {fact}: a rerun sets the damaged steps aside and '
            f'resumes from it')
  return f'{latest} is damaged ({damage}), and so is every older one: no checkpoint in {manager.directory} is intact'


def _try_restore(manager, step, args):
  """(restored, None), or (None, the error's first line) where the step does not read back."""
  try:
    with _reads_end_before_their_loop():
      return manager.restore(step, args=args), None
  except Exception as e:  # orbax/tensorstore raise many types (ValueError, FileNotFoundError, XlaRuntimeError, ...)
    return None, _first_line(e)


def _first_line(e):
  """The error's type and first line; orbax wraps TensorStore's error in one whose text is a repr of the store."""
  while e.__cause__ is not None:
    e = e.__cause__
  first = str(e).strip().splitlines()[0].split(' [tensorstore_spec')[0] if str(e).strip() else ''
  return f'{type(e).__name__}: {first[:300]}'


class _LoopThatLetsItsTasksEnd(asyncio.SelectorEventLoop):
  """orbax runs a restore in an event loop of its own and closes it as soon as one read fails (a damaged file, an
  array of another shape), while TensorStore goes on with the step's other reads: each of them, when it ends, calls
  back into the closed loop, and TensorStore prints a `RuntimeError: Event loop is closed` traceback for it,
  hundreds for a whole state. This loop lets its unfinished tasks (those reads) end before it closes; orbax's own
  error is raised as before."""

  def close(self):
    pending = [t for t in asyncio.all_tasks(self) if not t.done()]
    if pending and not self.is_running() and not self.is_closed():
      self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))  # the first error is orbax's
    super().close()


class _LoopsLetTheirTasksEnd(asyncio.DefaultEventLoopPolicy):
  def new_event_loop(self):
    return _LoopThatLetsItsTasksEnd()


@contextlib.contextmanager
def _reads_end_before_their_loop():
  """orbax's reads (asyncio.new_event_loop for each) under `_LoopThatLetsItsTasksEnd`."""
  previous = asyncio.get_event_loop_policy()
  asyncio.set_event_loop_policy(_LoopsLetTheirTasksEnd())
  try:
    yield
  finally:
    asyncio.set_event_loop_policy(previous)


def _corrupt_dir(manager):
  return os.path.join(os.path.dirname(str(manager.directory)), 'checkpoints_corrupt')


def _set_aside(manager, step, error):
  """Moves an unreadable step out of orbax's sight (nothing is deleted): left in place, it would be tried again at
  every start, and a later save of the same step number would collide with it."""
  src = epath.Path(str(manager.directory)) / str(step)
  dest = epath.Path(_corrupt_dir(manager)) / str(step)
  for i in range(1, 1000):  # the same step may go bad twice
    if not dest.exists():
      break
    dest = dest.parent / f'{step}.{i}'
  print(f'jssl: warning: checkpoint {src} could not be restored ({error}); moved to {dest}, an older step '
        f'restored', file=sys.stderr, flush=True)
  if jax.process_index() == 0:
    dest.parent.mkdir(parents=True, exist_ok=True)
    src.rename(dest)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f'jssl checkpoint {step} set aside')
  manager.reload()


def restore_data_iter(manager: ocp.CheckpointManager, step: int, data_iter):
  """Restores only the data iterator's position (in place), e.g. into an iterator built after the state was
  restored because the epoch's sampling plan depends on it."""
  with _reads_end_before_their_loop():
    manager.restore(step, args=ocp.args.Composite(data_iter=grain.PyGrainCheckpointRestore(data_iter)))


def restore_params(workdir: str, abstract_state, step: int | None = None):
  """Only the TrainState of a workdir's checkpoint (for evaluation / export): `step`, or else the latest that reads
  back and matches its checksums. Read-only: a damaged step is only warned about (the next training run on the
  workdir moves it aside)."""
  return _read_only(workdir, step, lambda manager, step: _restore_checked(manager, step, abstract_state))


def restore_parts(workdir: str, parts, step: int | None = None):
  """({part: its subtree of numpy arrays}, step): some parts of a workdir's checkpoint, each a path in the saved
  TrainState ('params/backbone', 'model_state/batch_stats/backbone', 'method_state'), read as they were saved
  (shapes and dtypes from the step's metadata: nothing is built) and checked against their checksums; a part the
  step does not hold is absent. Only their arrays are read: a backbone without the optimizer state (twice the
  params under Adam), EMA targets or memory banks. `step`, or else the latest that reads back, as
  restore_params."""
  def read(manager, step):
    try:
      saved = _saved_tree(manager, step)
    except Exception as e:  # as _try_restore: orbax/tensorstore raise many types
      return None, _first_line(e), True
    tree = {}
    for part in parts:
      subtree = _subtree(saved, part)
      if jax.tree.leaves(subtree):
        *parents, last = part.split('/')
        node = tree
        for key in parents:
          node = node.setdefault(key, {})
        node[last] = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), subtree)
    return _restore_checked(manager, step, tree, partial=True)

  restored, step = _read_only(workdir, step, read)
  return {part: _subtree(restored, part) for part in parts if _subtree(restored, part) is not None}, step


def saved_shapes(workdir: str, step: int | None = None):
  """(the saved TrainState's nested dicts of ShapeDtypeStructs, step) from a step's metadata alone (no array is
  read): `step`, or else the latest whose metadata reads back."""
  def read(manager, step):
    try:
      tree = _saved_tree(manager, step)
    except Exception as e:  # as _try_restore
      return None, _first_line(e), True
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree), None, True
  return _read_only(workdir, step, read, verb='read')


def _saved_tree(manager, step):
  with _reads_end_before_their_loop():
    return ocp.PyTreeCheckpointHandler().metadata(epath.Path(str(manager.directory)) / str(step) / 'state').tree


def _subtree(tree, path):
  for key in path.split('/'):
    tree = tree.get(key) if isinstance(tree, dict) else None
  return tree


def _read_only(workdir, step, read, verb='restored'):
  """`read(manager, step)` -> (result, None, verified) or (None, why not, verified) of `step`, or else of the latest
  step it reads, warning about each newer one; the workdir is left as it is."""
  manager = make_manager(workdir, async_save=False, read_only=True)
  try:
    if step is not None:
      result, error, verified = read(manager, step)
      if error is not None:
        raise CheckpointError(f'checkpoint {manager.directory / str(step)} could not be {verb} ({error})')
      if not verified:
        _warn_unverified(manager, step)
      return result, step
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {manager.directory}')
    for step in steps:
      result, error, verified = read(manager, step)
      if error is None:
        if not verified:
          _warn_unverified(manager, step)
        return result, step
      print(f'jssl: warning: checkpoint {manager.directory / str(step)} could not be {verb} ({error}); trying '
            f'the step before it', file=sys.stderr, flush=True)
    raise CheckpointError(f'no checkpoint in {manager.directory} could be {verb}')
  finally:
    manager.close()


def save_tree(directory: str, tree):
  """A pytree saved by itself (an imported backbone's variables/), with orbax's StandardCheckpointer."""
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory, tree)
    checkpointer.wait_until_finished()


def restore_tree(directory: str, abstract_tree):
  """A pytree saved by `save_tree`, restored into `abstract_tree`; a directory that does not read back is a
  CheckpointError naming it and what failed."""
  try:
    with _reads_end_before_their_loop(), ocp.StandardCheckpointer() as checkpointer:
      return checkpointer.restore(directory, abstract_tree)
  except Exception as e:  # as _try_restore: orbax/tensorstore raise many types
    raise CheckpointError(f'{directory}: could not be restored ({_first_line(e)})') from None
