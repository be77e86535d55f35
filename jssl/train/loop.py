"""Pretraining loop: build everything from the config, resume if the workdir has a checkpoint, run the jit'd
train step over global batches, and do the periodic actions (log, checkpoint, the evaluators of config.evals)."""
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from jssl import checkpoint, optim, pretrained
from jssl.config import ConfigError
from jssl.data import augment, loader, sources, transforms
from jssl.evaluate import evaluators
from jssl.methods.base import build_method
from jssl.train import guard, progress, sharding
from jssl.train import workdir as workdir_files
from jssl.train.state import TrainState


def steps_for(config, num_records):
  """(steps_per_epoch, total micro-steps) for the config and dataset size."""
  steps_per_epoch = max(num_records // config.batch_size, 1)
  total = config.total_steps if config.get('total_steps') else int(config.epochs * steps_per_epoch)
  return steps_per_epoch, total


def example_batch(config):
  """Global uint8 view shapes the train step sees."""
  return {'views': tuple(jax.ShapeDtypeStruct((config.batch_size, size, size, 3), jnp.uint8)
                         for size in transforms.view_sizes(config.data.views))}


def build_device_augment(config):
  """One on-device augmentation per view: config.data.augment, or config.data.augment_per_view's list per view."""
  d = config.data
  per_view = d.get('augment_per_view') or [d.augment] * len(transforms.view_sizes(d.views))
  return [augment.build_augment(list(ops), mean=d.mean, std=d.std) for ops in per_view]


def make_train_step(method, tx, augment_fns):
  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    aug_rng, loss_rng = jax.random.split(rng)
    aug_keys = jax.random.split(aug_rng, len(augment_fns))
    views = tuple(fn(k, v) for fn, k, v in zip(augment_fns, aug_keys, batch['views']))
    batch = {**batch, 'views': views}
    grad_fn = jax.value_and_grad(method.loss, has_aux=True)
    (loss, (metrics, model_state, method_state)), grads = grad_fn(
        state.params, state.model_state, state.method_state, batch, loss_rng, state.step)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    method_state = method.after_step(params, method_state, state.step)
    grad_norm = optax.global_norm(grads)
    metrics = {**metrics, 'grad_norm': grad_norm}
    # a NaN/inf step leaves everything as it was (params, optimizer, BN statistics, queues, EMA targets); only the
    # step advances, so the data and RNG stream stay those of an uninterrupted run
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(
        step=state.step + 1, params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
        model_state=keep(model_state, state.model_state), method_state=keep(method_state, state.method_state),
        nonfinite_steps=state.nonfinite_steps + jnp.where(finite, 0, 1),
        first_nonfinite_step=jnp.where(finite | (state.first_nonfinite_step >= 0), state.first_nonfinite_step,
                                       state.step + 1))
    return new_state, metrics
  return train_step


class Trainer:
  """Everything built from a config; `run()` trains (and evaluates as config.evals says)."""

  def __init__(self, config, workdir, num_records=None, devices=None, mode='train'):
    """`num_records` stands in for the training set's size when no data is read (benchmarks, tests, export);
    `devices`: a subset of jax.devices() for the mesh. Where data is read, it is checked here (`check_inputs`);
    `mode`: 'train' (training, with the evaluations of config.evals) or 'eval' (a checkpoint's evaluation only)."""
    pretrained.resolve_pretrained_backbone(config)
    self.config, self.workdir = config, workdir
    reads_data = num_records is None
    if reads_data:  # first, so that missing data is reported before any device work
      self.train_source = sources.build_source(config.data, 'train')
      num_records = len(self.train_source)
    self.mesh = sharding.make_mesh(**config.mesh, devices=devices)
    self.steps_per_epoch, self.total_steps = steps_for(config, num_records)
    self.method = build_method(config, self.total_steps, self.steps_per_epoch, num_records)
    self.evals, self.features = evaluators.build(self), evaluators.Features(self)
    if reads_data:
      self.check_inputs(mode)
    accum = config.optimizer.get('grad_accum_steps', 1)
    self.schedule = optim.build_schedule(config.optimizer, config.schedule, self.steps_per_epoch // accum,
                                         self.total_steps // accum)
    self.augment_fns = build_device_augment(config)
    self.batch_sharding = sharding.batch_sharding(self.mesh)

    def init_state(rng):
      param_rng, state_rng = jax.random.split(rng)
      batch = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), example_batch(config))
      params, model_state, method_state = self.method.init(param_rng, batch)
      tx = optim.build_optimizer(config.optimizer, self.schedule, params)
      return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                        model_state=model_state, method_state=method_state, rng=state_rng,
                        nonfinite_steps=jnp.zeros((), jnp.int32), first_nonfinite_step=jnp.full((), -1, jnp.int32))

    abstract = jax.eval_shape(init_state, jax.random.PRNGKey(config.seed))
    self.state_sharding = sharding.param_shardings(abstract, self.mesh, config.param_sharding)
    self.abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                       abstract, self.state_sharding)
    self.init_state = jax.jit(init_state, out_shardings=self.state_sharding)
    self.tx = optim.build_optimizer(config.optimizer, self.schedule, abstract.params)
    self.train_step = jax.jit(make_train_step(self.method, self.tx, self.augment_fns),
                              in_shardings=(self.state_sharding, self.batch_sharding),
                              out_shardings=(self.state_sharding, sharding.replicated(self.mesh)),
                              donate_argnums=(0,))

  def check_inputs(self, mode):
    """Every split, file and path the run will read, and every batch against the devices and the training set,
    checked before anything is compiled or written: a mistake found after hours of training costs those hours.
    The val split is built (and kept for the evaluations) where the run will evaluate."""
    c, devices = self.config, self.mesh.size
    if mode == 'train':
      sharding.check_divisible('config.batch_size', c.batch_size, devices)
      if c.batch_size > len(self.train_source):
        raise ConfigError(f'config.batch_size: {c.batch_size} is larger than the training set '
                          f'({len(self.train_source)} images, {self.train_source!r}); valid: at most '
                          f'{len(self.train_source) // devices * devices}')
      if c.init.get('backbone') and not c.init.get('random_init', False) and \
          (self.workdir is None or not workdir_files.checkpoint_steps(self.workdir)):  # a fresh run starts from it
        pretrained.check_pretrained(c, c.init.backbone)
    evaluates = mode == 'eval' or bool(self.evals)
    if evaluates or self.method.on_epoch is not None:  # the clustering methods extract features every epoch
      sharding.check_divisible('config.eval.batch_size', c.eval.batch_size, devices)
    if evaluates:
      self.val_source = sources.build_source(c.data, 'val')

  def source(self, split):
    """The 'train' or 'val' source, built once (by __init__ where the run reads data)."""
    if not hasattr(self, f'{split}_source'):
      setattr(self, f'{split}_source', sources.build_source(self.config.data, split))
    return getattr(self, f'{split}_source')

  def make_loader(self, epoch=None, method_state=None):
    """The training loader. Methods with epoch-level work (`on_epoch`) get one loader per epoch, reading the
    order `method.epoch_indices(method_state, epoch, seed)` gives (e.g. DeepCluster's uniform sampling over
    pseudo-classes), or a fresh shuffle seeded by the epoch when it gives None."""
    d, crops = self.config.data, transforms.train_transforms(self.config.data)
    seed = self.config.seed if epoch is None else self.config.seed + 1000003 * epoch
    indices = None if epoch is None or self.method.epoch_indices is None else \
        self.method.epoch_indices(method_state, epoch, seed)
    if indices is None:
      return loader.make_loader(self.train_source, crops, self.config.batch_size, seed=seed, shuffle=True,
                                worker_count=d.workers)
    # the plan is already in order; repeating it keeps an epoch whole when grain workers drop partial batches
    return loader.make_loader(sources.ReorderedSource(self.train_source, indices, tag=f'epoch {epoch}'), crops,
                              self.config.batch_size, seed=seed, shuffle=False, worker_count=d.workers)

  def start_epoch(self, state, epoch):
    """Epoch-level work before `epoch` (DeepCluster's clustering, ...): (state, the epoch's data iterator)."""
    t0 = time.time()
    state, summary = self.method.on_epoch(state, epoch, self)
    state = jax.device_put(state, self.state_sharding)
    if jax.process_index() == 0:
      print(f'epoch {epoch}: {summary} ({time.time() - t0:.1f} s)', flush=True)
    return state, iter(self.make_loader(epoch, state.method_state))

  def check_finite(self, state, manager, seen):  # the count of NaN/inf steps so far; see guard.check_finite
    return guard.check_finite(self.config, state, manager, seen, self.abstract_state)

  def run(self):
    steps = workdir_files.checkpoint_steps(self.workdir)
    # a resume is checked against the run's config.json before anything is written (the lock file included)
    self.resume_changes = workdir_files.check_resume(self.workdir, self.config, steps[-1]) if steps else []
    os.makedirs(self.workdir, exist_ok=True)
    lock = guard.lock_workdir(self.workdir)  # before anything is written: a second run on the workdir ends here
    try:
      with guard.StopOnSigterm() as stop:
        return self._run(stop)
    finally:
      if lock:
        lock.close()

  def _run(self, stop):
    config, workdir = self.config, self.workdir
    manager = checkpoint.make_manager(workdir, config.checkpoint.keep, config.checkpoint.get('keep_every') or None,
                                      config.checkpoint.get('async_save', True))
    state, data_iter = self.start(manager)
    step = start_step = int(state.step)
    log = progress.Progress(workdir, config, self.schedule, self.total_steps, self.steps_per_epoch, step)
    nonfinite, corrupt_images = int(state.nonfinite_steps), 0
    saves = guard.Saves(config, manager, self.abstract_state, step, nonfinite)
    while step < self.total_steps:
      if self.method.on_epoch is not None and step % self.steps_per_epoch == 0:  # also on resuming at an epoch
        state, data_iter = self.start_epoch(state, step // self.steps_per_epoch)  # boundary: it reruns exactly
      batch = next(data_iter)
      corrupt_images += int(np.sum(batch.pop('corrupt', 0)))  # host-only: config.data.skip_corrupt_images
      if step == start_step:
        log.say('compiling the train step ...')
      state, metrics = self.train_step(state, loader.to_global(batch, self.mesh))
      step += 1
      if step == start_step + 1:
        log.compiled(metrics, step)
      logging_step = step % config.log_every == 0 or step == self.total_steps
      saving_step = step % config.checkpoint.every == 0 or step == self.total_steps
      if logging_step or saving_step:  # before anything is saved: a NaN step never reaches a checkpoint
        nonfinite = self.check_finite(state, manager, nonfinite)
      if logging_step:
        log.log(step, metrics, nonfinite, corrupt_images)
      if saving_step:
        saves.save(step, state, data_iter, nonfinite)
      if stop(step) and step < self.total_steps:  # SIGTERM: the same step on every process (see train/guard.py)
        saves.preempted(step, state, data_iter, self.check_finite(state, manager, nonfinite))
        log.say(f'preempted at step {step}: checkpoint saved in {manager.directory / str(step)}; run the same '
                f'command again to resume')
        log.close(results_written=False)
        manager.close()
        return state, {'steps': step, 'preempted': True}
      if step < self.total_steps:
        evaluators.run(evaluators.due(self.evals, step), self, state, step, log.writer, final=False)
    manager.wait_until_finished()
    results = {'steps': step, 'train_seconds_this_run': round(time.time() - log.start_time, 1)}
    results.update(evaluators.run([e for e in self.evals if e.at_end], self, state, step, log.writer, final=True))
    if jax.process_index() == 0:
      workdir_files.write_results(workdir, results)
    log.close(results_written=True)
    manager.close()
    return state, results

  def start(self, manager):
    """(state, data iterator): restored from the latest checkpoint (the loader's position too), or initialized
    (from config.init.backbone where it names one); then config.json is written."""
    config, is_main = self.config, jax.process_index() == 0
    per_epoch = self.method.on_epoch is not None  # its loader reads a plan built from the state: made after it
    data_iter = None if per_epoch else iter(self.make_loader())
    if manager.latest_step() is None:
      state = self.init_state(jax.random.PRNGKey(config.seed))
      if config.init.get('backbone') and not config.init.get('random_init', False):
        state = pretrained.load_backbone(config, state, config.init.backbone)
    else:
      state, step = checkpoint.restore(manager, self.abstract_state, data_iter)
      logging.info('resumed from %s at step %d', manager.directory, step)
      if is_main:
        print(f'resumed from step {step} ({manager.directory})', flush=True)
      if per_epoch and step % self.steps_per_epoch and step < self.total_steps:
        data_iter = iter(self.make_loader(step // self.steps_per_epoch, state.method_state))
        checkpoint.restore_data_iter(manager, step, data_iter)
      if is_main:
        workdir_files.print_changes(self.resume_changes, self.workdir)
    if is_main:  # once the start is accepted: a refused or failed one leaves the run's config.json as it was
      workdir_files.write_config(self.workdir, config, int(state.step))
    return state, data_iter
