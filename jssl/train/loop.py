"""Pretraining loop: build everything from the config, resume if the workdir has a checkpoint, run the jit'd
train step over global batches, and do the periodic actions (log, checkpoint, kNN eval)."""
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from jssl import checkpoint, optim, pretrained
from jssl.config import ConfigError
from jssl.data import augment, loader, sources, transforms
from jssl.evaluate import knn
from jssl.evaluate.linear import fit_linear_probe
from jssl.methods.base import build_method
from jssl.train import guard, sharding
from jssl.train import workdir as workdir_files
from jssl.train.state import TrainState


def steps_for(config, num_records):
  """(steps_per_epoch, total micro-steps) for the config and dataset size."""
  steps_per_epoch = max(num_records // config.batch_size, 1)
  total = config.total_steps if config.get('total_steps') else int(config.epochs * steps_per_epoch)
  return steps_per_epoch, total


def build_device_augment(config):
  """One on-device augmentation function per view (config.data.augment applies to every view unless
  config.data.augment_per_view gives a list per view)."""
  d = config.data
  per_view = d.get('augment_per_view') or [d.augment] * num_views(config)
  return [augment.build_augment(list(ops), mean=d.mean, std=d.std) for ops in per_view]


def num_views(config):
  return len(transforms.view_sizes(config.data.views))


def example_batch(config):
  """Global uint8 view shapes the train step sees."""
  return {'views': tuple(jax.ShapeDtypeStruct((config.batch_size, size, size, 3), jnp.uint8)
                         for size in transforms.view_sizes(config.data.views))}


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
  """Everything built from a config; `run()` trains, `evaluate_knn()` evaluates."""

  def __init__(self, config, workdir, num_records=None, devices=None, mode='train'):
    """`num_records` stands in for the training set's size when no data is read (benchmarks, tests, export);
    `devices` restricts the mesh to a subset of jax.devices(). Where data is read, everything the run will read
    and every batch size is checked here, before any compile (`check_inputs`); `mode`: 'train' (a training run,
    with the evaluations its config asks for) or 'eval' (evaluation of a checkpoint only)."""
    pretrained.resolve_pretrained_backbone(config)
    self.config = config
    self.workdir = workdir
    reads_data = num_records is None
    if reads_data:  # first, so that missing data is reported before any device work
      self.train_source = sources.build_source(config.data, 'train')
      num_records = len(self.train_source)
    self.mesh = sharding.make_mesh(**config.mesh, devices=devices)
    self.steps_per_epoch, self.total_steps = steps_for(config, num_records)
    self.method = build_method(config, self.total_steps, self.steps_per_epoch, num_records)
    self.eval_every = config.eval.every or int(config.eval.get('every_epochs', 0) * self.steps_per_epoch)
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
    c = self.config
    classifier = hasattr(self.method, 'predict')  # an evaluator: val accuracy at the end
    evaluates = mode == 'eval' or classifier or c.eval.at_end or self.eval_every
    devices = self.mesh.size
    if mode == 'train':
      _check_divisible('config.batch_size', c.batch_size, devices)
      if c.batch_size > len(self.train_source):
        raise ConfigError(f'config.batch_size: {c.batch_size} is larger than the training set '
                          f'({len(self.train_source)} images, {self.train_source!r}); valid: at most '
                          f'{len(self.train_source) // devices * devices}')
      if c.init.get('backbone') and not c.init.get('random_init', False) and \
          (self.workdir is None or not workdir_files.checkpoint_steps(self.workdir)):  # a fresh run starts from it
        pretrained.check_pretrained(c, c.init.backbone)
    if evaluates or hasattr(self.method, 'on_epoch'):  # the clustering methods extract features every epoch
      _check_divisible('config.eval.batch_size', c.eval.batch_size, devices)
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
    d = self.config.data
    crops = [transforms.RandomResizedCropViews([dict(v) for v in d.views])]
    if d.get('randaugment'):  # e.g. 'rand-m9-mstd0.5-inc1' (fine-tuning), filled with the mean colour as timm's
      from jssl.data.randaugment import RandAugmentViews
      fill = tuple(min(255, round(255 * m)) for m in d.mean)
      try:
        crops.append(RandAugmentViews.from_config(dict(policy=d.randaugment, fill=fill, interpolation='bicubic')))
      except ValueError as e:
        raise ValueError(f'config.data.randaugment: {e}') from None
    if epoch is None:
      return loader.make_loader(self.train_source, crops, self.config.batch_size, seed=self.config.seed,
                                shuffle=True, worker_count=d.workers)
    seed = self.config.seed + 1000003 * epoch
    indices = getattr(self.method, 'epoch_indices', lambda *a: None)(method_state, epoch, seed)
    if indices is None:
      return loader.make_loader(self.train_source, crops, self.config.batch_size, seed=seed, shuffle=True,
                                worker_count=d.workers)
    # the plan is already in order; repeating it keeps an epoch whole when grain workers drop partial batches
    return loader.make_loader(sources.ReorderedSource(self.train_source, indices, tag=f'epoch {epoch}'), crops,
                              self.config.batch_size, seed=seed, shuffle=False, worker_count=d.workers)

  def extract_train_features(self, state, extract_fn):
    """Features of the whole training set under `state` (eval-mode transform: config.eval resize/crop), for
    epoch-level clustering: (row-sharded [M, D] global array, record index per row, -1 on padding).
    `extract_fn(params, model_state, images)` is jit'd once per trainer."""
    d, e = self.config.data, self.config.eval
    if getattr(self, '_train_extract', (None,))[0] is not extract_fn:
      mean, std = jnp.asarray(d.mean, jnp.float32), jnp.asarray(d.std, jnp.float32)
      fn = jax.jit(lambda params, model_state, x: extract_fn(params, model_state,
                                                             (x.astype(jnp.float32) / 255. - mean) / std),
                   out_shardings=self.batch_sharding)
      self._train_extract = (extract_fn, fn)
    fn = self._train_extract[1]
    transform = transforms.ResizeCenterCrop(resize=e.resize, crop=e.crop, interpolation=e.interpolation)
    return knn.extract_sharded(lambda x: fn(state.params, state.model_state, x), self.train_source, transform,
                               e.batch_size, self.mesh)

  def start_epoch(self, state, epoch):
    """Epoch-level work before `epoch` (DeepCluster's clustering, ...); returns the state and the epoch's
    data iterator."""
    t0 = time.time()
    state, summary = self.method.on_epoch(state, epoch, self)
    state = jax.device_put(state, self.state_sharding)
    if jax.process_index() == 0:
      print(f'epoch {epoch}: {summary} ({time.time() - t0:.1f} s)', flush=True)
    return state, iter(self.make_loader(epoch, state.method_state))

  # --- evaluation -------------------------------------------------------------------------------------------
  def knn_features(self, state):
    """images -> what kNN reads under `state` (see `knn_extract_fn`)."""
    fn, variables = self.knn_extract_fn(), self.knn_variables(state)
    return lambda x: fn(variables, x)

  def knn_extract_fn(self):
    """(variables, images) -> features for kNN: the method's features (`method.extract`), or, with
    config.eval.feature_stage >= 0, the backbone's map output of that number (its `feature_info`) global-average-
    pooled (ResNet: 0 the stem, 1..4 the stages, MMSelfSup's feat1..feat5; Swin: the stages of its out_indices),
    for pretext tasks whose last stage specializes (Rotation Prediction, Relative Location). `knn_variables(state)`
    gives the matching variables."""
    stage = self.config.eval.get('feature_stage', -1)
    if stage < 0:
      return lambda variables, x: self.method.extract(*variables, x)
    from jssl.methods.base import compute_dtype
    from jssl.models import build_backbone
    from jssl.models.backbone import map_output
    from jssl.models.layers import sobel
    from jssl.models.necks import global_avg_pool
    b = self.config.backbone
    backbone = build_backbone(b.name, dtype=compute_dtype(self.config), **b.get('kwargs', {}))
    output = map_output(backbone, stage)
    if output is None:
      maps = [o.index for o in backbone.feature_info() if o.kind == 'map']
      ranged = len(maps) > 2 and maps == list(range(maps[0], maps[-1] + 1))
      valid = ["-1 (the method's features)"] + ([f'{maps[0]}..{maps[-1]}'] if ranged else [str(i) for i in maps])
      raise ValueError(f'config.eval.feature_stage: {stage} is not an output of {b.name}; valid: {", ".join(valid)}')
    with_sobel = self.config.model.get('with_sobel', False)
    return lambda variables, x: global_avg_pool(backbone.apply(variables, sobel(x) if with_sobel else x,
                                                               train=False, outputs=(output.name,))[output.name])

  def knn_variables(self, state):
    if self.config.eval.get('feature_stage', -1) < 0:
      return (state.params, state.model_state)
    return pretrained.backbone_subtree(state)

  def evaluate_knn(self, state, k=None):
    """Weighted kNN top-1/top-5 of the backbone's features, train split as memory, val split as queries
    (k: config.eval.knn_k, or a tuple of ks -> {k: result}); the memory's rows are split over the mesh."""
    e = self.config.eval
    return knn.knn_accuracy(*self.eval_features(state), k=k or e.knn_k, temperature=e.knn_t, mesh=self.mesh)

  def eval_features(self, state):
    """(train features, train labels, val features, val labels) that kNN reads, center-cropped."""
    d, e = self.config.data, self.config.eval
    key = e.get('feature_stage', -1)
    if getattr(self, '_knn_extractor', (None,))[0] != key:  # compiled once per run for every state evaluated
      mean, std = jnp.asarray(d.mean, jnp.float32), jnp.asarray(d.std, jnp.float32)
      normalize = lambda x: (x.astype(jnp.float32) / 255. - mean) / std
      self._knn_extractor = (key, knn.make_extractor(self.knn_extract_fn(), normalize, self.mesh))
    extractor, variables = self._knn_extractor[1], self.knn_variables(state)
    transform = transforms.ResizeCenterCrop(resize=e.resize, crop=e.crop, interpolation=e.interpolation)
    train_f, train_y = knn.extract_features(extractor, variables, self.source('train'), transform, e.batch_size,
                                            self.mesh)
    test_f, test_y = knn.extract_features(extractor, variables, self.source('val'), transform, e.batch_size,
                                          self.mesh)
    return train_f, train_y, test_f, test_y

  def evaluate_classifier(self, state):
    """Top-1 / top-5 (%) of each of the method's classifiers (`method.predict`) on the val split, resized and
    center-cropped as config.eval says: {head name: {'top1', 'top5'}}."""
    d, e = self.config.data, self.config.eval
    if not hasattr(self, '_predictor'):
      mean, std = jnp.asarray(d.mean, jnp.float32), jnp.asarray(d.std, jnp.float32)
      normalize = lambda x: (x.astype(jnp.float32) / 255. - mean) / std

      def top5(variables, x):  # [B, heads, 5] class ids: what the accuracy needs, not [B, heads, classes] logits
        logits = self.method.predict(*variables, x)
        k = min(5, next(iter(logits.values())).shape[-1])
        return jnp.stack([jax.lax.top_k(v.astype(jnp.float32), k)[1] for v in logits.values()], axis=1)
      self._predictor = knn.make_extractor(top5, normalize, self.mesh)
    transform = transforms.ResizeCenterCrop(resize=e.resize, crop=e.crop, interpolation=e.interpolation)
    ranked, labels = knn.extract_features(self._predictor, (state.params, state.model_state, state.method_state),
                                          self.source('val'),
                                          transform, e.batch_size, self.mesh)
    hits = ranked == labels[:, None, None]
    return {name: {'top1': 100. * float(hits[:, i, :1].any(-1).mean()),
                   'top5': 100. * float(hits[:, i].any(-1).mean())}
            for i, name in enumerate(self.method.head_names)}

  def report_classifier(self, state, step, writer, is_main):
    """evaluate_classifier, printed as a table and written to TensorBoard (eval/<head>/top1, top5)."""
    result = self.evaluate_classifier(state)
    if is_main:
      _print_table(f'step {step} | {self.config.method} on the {self.config.data.val_split} split '
                   f'({len(self.source("val"))} images)', ['head', 'top-1 %', 'top-5 %'],
                   [[name, f'{r["top1"]:.2f}', f'{r["top5"]:.2f}'] for name, r in result.items()])
      for name, r in result.items():
        writer.add_scalar(f'eval/{name}/top1', r['top1'], step)
        writer.add_scalar(f'eval/{name}/top5', r['top5'], step)
    return result

  # --- training ---------------------------------------------------------------------------------------------
  def check_finite(self, state, manager, seen):
    """The run's count of NaN/inf steps (their updates were not applied). config.nonfinite='stop' ends the run
    at the first one, before any checkpoint holds a later step; 'skip' warns and goes on (see save_checkpoint)."""
    count = int(state.nonfinite_steps)
    if count > seen:
      first = int(state.first_nonfinite_step)
      if self.config.get('nonfinite', 'stop') == 'stop':
        raise NonFiniteError(f'loss or gradients are NaN/inf at step {first}; {self.last_checkpoint(manager, state)}'
                             f'; --config.nonfinite=skip skips such steps instead')
      logging.warning('skipped %d steps with NaN/inf loss or gradients (the first at step %d)', count, first)
    return count

  def save_checkpoint(self, manager, step, state, data_iter, nonfinite, last_saved, force=False):
    """Saves the step's checkpoint and returns (step, nonfinite): the next call's `last_saved`. Under
    config.nonfinite='skip', a state whose steps since the last save (or the start of this run) were mostly
    skipped (more than config.nonfinite_max_skipped of them) is not saved: the run ends with an error instead, as
    under 'stop', since one that learns nothing is not a success; fewer skipped steps are named in a warning."""
    since, skipped_before = last_saved
    skipped, steps = nonfinite - skipped_before, step - since
    if skipped:
      limit = self.config.get('nonfinite_max_skipped', 0.5)
      if skipped > limit * steps:
        raise NonFiniteError(f'{skipped} of the {steps} steps since step {since} had NaN/inf loss or gradients and '
                             f'were skipped (more than config.nonfinite_max_skipped={limit}): stopped without '
                             f'saving step {step}; {self.last_checkpoint(manager, state)}')
      if jax.process_index() == 0:
        print(f'jssl: warning: checkpoint {step} holds {skipped} of the {steps} steps since step {since} skipped '
              f'(NaN/inf loss or gradients; not applied)', file=sys.stderr, flush=True)
    checkpoint.save(manager, step, state, data_iter, force=force)
    return step, nonfinite

  def last_checkpoint(self, manager, state):
    """For a run that ends without saving: whether its last checkpoint is intact, checked (checkpoint.check_latest)
    once pending saves have landed. The run's own state is freed first: it is not saved, and the checkpoint is
    read back into the devices' memory beside it otherwise."""
    manager.wait_until_finished()
    for x in jax.tree.leaves(state):
      if not x.is_deleted():
        x.delete()
    return checkpoint.check_latest(manager, self.abstract_state)

  def run(self):
    config, workdir = self.config, self.workdir
    steps = workdir_files.checkpoint_steps(workdir)
    # a resume is checked against the run's config.json before anything is written (the lock file included)
    self.resume_changes = workdir_files.check_resume(workdir, config, steps[-1]) if steps else []
    os.makedirs(workdir, exist_ok=True)
    lock = guard.lock_workdir(workdir)  # before anything is written: a second run on the workdir ends here
    try:
      with guard.StopOnSigterm() as stop:
        return self._run(stop)
    finally:
      if lock:
        lock.close()

  def _run(self, stop):
    config, workdir = self.config, self.workdir
    is_main = jax.process_index() == 0
    # methods with epoch-level work read a new plan each epoch, built from the state, so their iterator is made
    # (and its position restored) after the state
    per_epoch = hasattr(self.method, 'on_epoch')
    data_iter = None if per_epoch else iter(self.make_loader())
    manager = checkpoint.make_manager(workdir, config.checkpoint.keep, config.checkpoint.get('keep_every') or None,
                                      config.checkpoint.get('async_save', True))
    if manager.latest_step() is not None:
      state, step = checkpoint.restore(manager, self.abstract_state, data_iter)
      logging.info('resumed from %s at step %d', manager.directory, step)
      if is_main:
        print(f'resumed from step {step} ({manager.directory})', flush=True)
      if per_epoch and step % self.steps_per_epoch and step < self.total_steps:
        data_iter = iter(self.make_loader(step // self.steps_per_epoch, state.method_state))
        checkpoint.restore_data_iter(manager, step, data_iter)
      if is_main and self.resume_changes is None:
        print(f'jssl: warning: {workdir} has checkpoints but no config.json: the resume could not be checked '
              f'against the config of the run', file=sys.stderr, flush=True)
      elif is_main and self.resume_changes:
        workdir_files.print_changes(self.resume_changes, os.path.join(workdir, 'config.json'))
    else:
      state = self.init_state(jax.random.PRNGKey(config.seed))
      if config.init.get('backbone') and not config.init.get('random_init', False):
        state = pretrained.load_backbone(config, state, config.init.backbone)
    if is_main:  # once the start is accepted: a refused or failed one leaves the run's config.json as it was
      workdir_files.write_config(workdir, config, int(state.step))
    writer = _summary_writer(workdir) if is_main else None
    step = int(state.step)
    accum = config.optimizer.get('grad_accum_steps', 1)
    start_time, last_time, last_step = time.time(), time.time(), step
    metrics, nonfinite, corrupt_images = None, int(state.nonfinite_steps), 0
    last_saved = (step, nonfinite)  # the window save_checkpoint checks for skipped steps
    classifier = hasattr(self.method, 'predict')  # an evaluator: val accuracy instead of kNN
    eval_every = self.eval_every
    start_step = step
    while step < self.total_steps:
      if per_epoch and step % self.steps_per_epoch == 0:  # also on resuming at an epoch boundary: it is a function
        state, data_iter = self.start_epoch(state, step // self.steps_per_epoch)  # of the state, so it reruns exactly
      batch = next(data_iter)
      corrupt_images += int(np.sum(batch.pop('corrupt', 0)))  # host-only: config.data.skip_corrupt_images
      batch = loader.to_global(batch, self.mesh)
      if step == start_step and is_main:
        print('compiling the train step ...', flush=True)
      state, metrics = self.train_step(state, batch)
      step += 1
      if step == start_step + 1:  # this run's first step compiled: img/s and ETA count from its end
        jax.block_until_ready(metrics)
        last_time, last_step = time.time(), step
      logging_step = step % config.log_every == 0 or step == self.total_steps
      saving_step = step % config.checkpoint.every == 0 or step == self.total_steps
      if logging_step or saving_step:  # before anything is saved: a NaN step never reaches a checkpoint
        nonfinite = self.check_finite(state, manager, nonfinite)
      if logging_step:
        metrics = {**jax.device_get(metrics), 'nonfinite_steps': nonfinite}
        if config.data.get('skip_corrupt_images'):  # replaced so far in this run, all processes -> train/corrupt_images
          metrics['corrupt_images'] = loader.sum_over_processes(corrupt_images)
        now, timed = time.time(), step - last_step  # timed: 0 on the compiling first step itself
        lr = float(self.schedule((step - 1) // accum))
        if timed:
          img_s = timed * config.batch_size / (now - last_time)
          eta = (self.total_steps - step) * (now - last_time) / timed
        last_time, last_step = now, step
        if is_main:
          speed = f' | {img_s:.1f} img/s | ETA {_hms(eta)}' if timed else ''
          skipped = f' | skipped {nonfinite} non-finite steps' if nonfinite else ''
          if metrics.get('corrupt_images'):
            skipped += f' | {metrics["corrupt_images"]} unreadable images replaced'
          print(f'step {step}/{self.total_steps} | epoch {step / self.steps_per_epoch:.2f} | '
                f'loss {metrics["loss"]:.4f} | lr {lr:.3g}{speed}{skipped}', flush=True)
          for k, v in metrics.items():  # NaN/inf too (config.nonfinite='skip'): what the step computed
            writer.add_scalar(f'train/{k}', float(v), step)
          writer.add_scalar('train/lr', lr, step)
          if timed:
            writer.add_scalar('train/img_per_sec', img_s, step)
      if saving_step:
        last_saved = self.save_checkpoint(manager, step, state, data_iter, nonfinite, last_saved)
      if stop(step) and step < self.total_steps:  # SIGTERM: the same step on every process (see train/guard.py)
        nonfinite = self.check_finite(state, manager, nonfinite)
        if manager.latest_step() != step:
          last_saved = self.save_checkpoint(manager, step, state, data_iter, nonfinite, last_saved, force=True)
        manager.wait_until_finished()
        if is_main:
          print(f'preempted at step {step}: checkpoint saved in {manager.directory / str(step)}; run the same '
                f'command again to resume', flush=True)
          print(_outputs(workdir, results_written=False), flush=True)
          writer.close()
        manager.close()
        return state, {'steps': step, 'preempted': True}
      if eval_every and step % eval_every == 0 and step != self.total_steps:
        if classifier:
          self.report_classifier(state, step, writer, is_main)
        else:
          result = self.evaluate_knn(state)
          if is_main:
            print(f'step {step} | knn top1 {result["top1"]:.2f} top5 {result["top5"]:.2f}', flush=True)
            writer.add_scalar('eval/knn_top1', result['top1'], step)
    manager.wait_until_finished()
    results = {'steps': step, 'train_seconds_this_run': round(time.time() - start_time, 1)}
    if classifier:
      if is_main:
        print(f'evaluating on the {config.data.val_split} split ...', flush=True)
      results['val'] = self.report_classifier(state, step, writer, is_main)
      results['init'] = ('random' if config.init.get('random_init', False) or not config.init.get('backbone')
                         else config.init.backbone)
    elif config.eval.at_end:
      e = config.eval
      if is_main:
        probe = ' and a linear probe' if e.get('linear_epochs', 0) else ''
        print(f'evaluating: kNN{probe} on the {config.data.val_split} split, the trained and the random-init backbone '
              f'...', flush=True)
      trained, random_init = [self.eval_features(s) for s in (state, self.init_state(jax.random.PRNGKey(config.seed)))]
      knn_trained, knn_random = [knn.knn_accuracy(*f, k=e.knn_k, temperature=e.knn_t, mesh=self.mesh)
                                  for f in (trained, random_init)]
      results.update({'knn_top1': knn_trained['top1'], 'knn_top5': knn_trained['top5'],
                      'knn_top1_random_init': knn_random['top1'], 'knn_top5_random_init': knn_random['top5'],
                      'knn_k': e.knn_k, 'knn_t': e.knn_t, 'knn_feature_stage': e.get('feature_stage', -1)})
      rows = [['kNN', f'{knn_trained["top1"]:.2f}', f'{knn_random["top1"]:.2f}']]
      if e.get('linear_epochs', 0):  # the quick probe on the same features (evaluate/linear.fit_linear_probe)
        probe = lambda f: fit_linear_probe(*f, epochs=e.linear_epochs, lr=e.linear_lr, seed=config.seed)
        lin_trained, lin_random = probe(trained), probe(random_init)
        results.update({'linear_top1': lin_trained['top1'], 'linear_top5': lin_trained['top5'],
                        'linear_top1_random_init': lin_random['top1'],
                        'linear_top5_random_init': lin_random['top5'], 'linear_epochs': e.linear_epochs})
        rows.append(['linear probe', f'{lin_trained["top1"]:.2f}', f'{lin_random["top1"]:.2f}'])
      if is_main:
        stage = e.get('feature_stage', -1)
        where = f', backbone output {stage}' if stage >= 0 else ''
        _print_table(f'{config.data.val_split} split top-1 % (kNN k={e.knn_k}{where}; linear probe on the same '
                     f'features)', ['', 'trained', 'random init'], rows)
        print(f'kNN (k={e.knn_k}{where}) top-1: trained {knn_trained["top1"]:.2f}% | random init '
              f'{knn_random["top1"]:.2f}%', flush=True)
        writer.add_scalar('eval/knn_top1', knn_trained['top1'], step)
    if is_main:
      workdir_files.write_results(workdir, results)
      writer.close()
      print(_outputs(workdir, results_written=True), flush=True)
    manager.close()
    return state, results


def _check_divisible(field, batch_size, devices):
  """A global batch is split evenly over every device (and so over the processes, which read equal shares)."""
  multiple = math.lcm(devices, jax.process_count())
  if batch_size % multiple:
    lower = batch_size // multiple * multiple
    nearest = ' or '.join(str(b) for b in (lower, lower + multiple) if b > 0)
    procs = f' of {jax.process_count()} processes' if jax.process_count() > 1 else ''
    raise ConfigError(f'{field}: {batch_size} does not split evenly over the {devices} devices{procs}; nearest '
                      f'valid: {nearest}')


class NonFiniteError(FloatingPointError):
  """A NaN/inf loss or gradient under config.nonfinite='stop'."""


def _print_table(title, header, rows):
  widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
  line = lambda r: ' | '.join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
  print('\n'.join([title, line(header), '-+-'.join('-' * w for w in widths)] + [line(r) for r in rows]), flush=True)


def _outputs(workdir, results_written):
  """The last line of a run: where its results, checkpoints and TensorBoard events are."""
  results = f'results: {os.path.join(workdir, "results.json")}' if results_written else \
      'results.json: written when the run ends'
  return (f'{results} | checkpoints: {os.path.join(workdir, "checkpoints")} | '
          f'TensorBoard events: {os.path.join(workdir, "tensorboard")}')


def _summary_writer(workdir):
  from tensorboardX import SummaryWriter  # pure-python event writer, no TensorFlow needed
  return SummaryWriter(os.path.join(workdir, 'tensorboard'))


def _hms(seconds):
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'
