"""Throughput and memory of a config's train step on synthetic batches (no dataset needed), or of one
backbone's forward + backward.

  python -m jssl.bench --config=configs/simclr.py:demo
  python -m jssl.bench --config=configs/mae.py --config.batch_size=8 --steps=3
  python -m jssl.bench --backbone=resnet50 --image_size=224 --batch_size=8 [--dtype=bfloat16]
  python -m jssl.bench --kmeans=100000,2048,256,1000      # DeepCluster's clustering: N, D in, PCA dim, k
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m jssl.bench --config=configs/mae.py:vit_l --memory_only

Prints compile time, ms/step, img/s, FLOPs per step (XLA cost analysis), achieved TFLOP/s and MFU when the
device's peak is known, and memory (XLA's compiled memory analysis; the allocator's peak on GPU/TPU).
`--memory_only` compiles the config's train step for abstract inputs and runs nothing: the memory one device
needs (arguments = state + batch shard, temporaries) for any mesh, e.g. a pod's on 8 simulated CPU devices.
"""
import json
import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from jssl.config import ConfigError, check_config, config_value, fail, parse_flags
# jax (and jssl.train, which imports it) is imported by the functions that use it: --help starts fast

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/mae.py:demo.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps (after one warm-up step).')
_JSON = flags.DEFINE_string('json', None, 'Also write the figures to this JSON file.')
_BACKBONE = flags.DEFINE_string('backbone', None, 'Benchmark this backbone alone (forward + backward) instead.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Input size for --backbone.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Global batch for --backbone.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype for --backbone.')
_KMEANS = flags.DEFINE_string(
    'kmeans', None, 'Benchmark the epoch-level clustering instead: "N,D_IN,D,K" random features [N, D_IN] over all '
    'devices, PCA-whitened to D, one Lloyd iteration of k-means with K clusters (timed after a warm-up); prints '
    'the time of each part and extrapolates DeepCluster\'s ImageNet case (1,281,167 x 256, k=10,000, 20 '
    'iterations) by N * K * D.')
_MEMORY_ONLY = flags.DEFINE_boolean(
    'memory_only', False, 'Compile the train step for abstract inputs (no step run, no state allocated) and print '
    'XLA\'s memory analysis per device. On CPU the concurrency-optimized scheduler is turned off first '
    '(--xla_cpu_enable_concurrency_optimized_scheduler=false unless XLA_FLAGS sets it): it keeps rematerialized '
    'activations alive, so remat would show no saving (docs/scale_out.md).')
_NUM_RECORDS = flags.DEFINE_integer(
    'num_records', None, 'Training-set size the method is built for (memory banks such as NPID\'s and InterCLR\'s '
    'hold a row per image; epoch-based schedules). Default: the embedded dataset\'s size for data.name=digits, '
    'else ImageNet-1k\'s 1,281,167 (the reference recipes\' dataset).')

IMAGENET_TRAIN_RECORDS = 1281167

# Dense peak FLOP/s per chip for bf16 (fp32 on CPU is not listed: MFU is not reported there).
PEAK_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'TPU v4': 275e12, 'TPU v5 lite': 197e12,
              'TPU v5e': 197e12, 'TPU v5p': 459e12, 'TPU v6 lite': 918e12}


def device_peak_flops(device):
  kind = device.device_kind
  for name, flops in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return flops
  return None


def synthetic_batch(config, mesh, num_records, seed=0):
  """Random uint8 views plus what the loader adds: distinct dataset indices (memory banks) and labels."""
  import jax
  from jssl.train.loop import example_batch
  rng = np.random.default_rng(seed)
  batch = jax.tree.map(lambda s: rng.integers(0, 256, s.shape, dtype=np.uint8), example_batch(config))
  batch['index'] = rng.choice(num_records, config.batch_size, replace=num_records < config.batch_size)
  batch['label'] = np.full((config.batch_size,), -1, np.int32)
  per_host = jax.tree.map(lambda x: x[:x.shape[0] // jax.process_count()], batch)
  from jssl.data.loader import to_global
  return to_global(per_host, mesh)


def default_num_records(config):
  if config.data.name == 'digits':  # embedded: cheap to count
    from jssl.data import sources
    return len(sources.build_source(config.data, 'train'))
  return IMAGENET_TRAIN_RECORDS


def benchmark(config, steps=5, num_records=None):
  import jax
  from jssl.train.loop import Trainer
  num_records = default_num_records(config) if num_records is None else num_records
  trainer = Trainer(config, workdir=None, num_records=num_records)
  state = trainer.init_state(jax.random.PRNGKey(config.seed))
  batch = synthetic_batch(config, trainer.mesh, num_records)
  head = {'config_method': config.method, 'backbone': config.backbone.name, 'batch_size': config.batch_size,
          'dtype': config.dtype, 'num_records': num_records}
  return time_step(trainer.train_step, state, batch, config.batch_size, steps, head)


def memory_analysis(config, num_records=None):
  """XLA's per-device memory for the config's train step, compiled for abstract inputs only."""
  import jax
  import jax.numpy as jnp
  from jssl.train.loop import Trainer, example_batch
  num_records = default_num_records(config) if num_records is None else num_records
  trainer = Trainer(config, workdir=None, num_records=num_records)
  batch = {**example_batch(config), 'index': jax.ShapeDtypeStruct((config.batch_size,), jnp.int32),
           'label': jax.ShapeDtypeStruct((config.batch_size,), jnp.int32)}
  batch = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=trainer.batch_sharding), batch)
  t0 = time.perf_counter()
  mem = trainer.train_step.lower(trainer.abstract_state, batch).compile().memory_analysis()
  compile_s = time.perf_counter() - t0
  n = trainer.mesh.size
  # the state's bytes per device from its shardings: what FSDP divides
  state_bytes = sum(int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize
                    for a, s in zip(jax.tree.leaves(trainer.abstract_state), jax.tree.leaves(trainer.state_sharding)))
  mb = lambda b: round(b / 2**20, 1)
  # donated state: outputs alias arguments, so the peak is arguments + unaliased outputs + temporaries
  peak = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
  return {'config_method': config.method, 'backbone': config.backbone.name, 'batch_size': config.batch_size,
          'batch_per_device': config.batch_size / n, 'mesh': dict(trainer.mesh.shape),
          'param_sharding': config.param_sharding, 'remat': config.remat, 'dtype': config.dtype,
          'devices': n, 'device_kind': jax.devices()[0].device_kind, 'compile_s': round(compile_s, 1),
          'state_mb_per_device': mb(state_bytes), 'arguments_mb': mb(mem.argument_size_in_bytes),
          'outputs_mb': mb(mem.output_size_in_bytes), 'aliased_mb': mb(mem.alias_size_in_bytes),
          'temporaries_mb': mb(mem.temp_size_in_bytes), 'peak_estimate_mb': mb(peak),
          'peak_estimate_gib': round(peak / 2**30, 2)}


def cpu_memory_scheduler():
  """Before the backend starts: XLA:CPU's default concurrency-optimized scheduler keeps rematerialized
  activations alive (remat then saves nothing); memory figures should come from the memory-minimizing one."""
  import os
  flags_env = os.environ.get('XLA_FLAGS', '')
  if 'xla_cpu_enable_concurrency_optimized_scheduler' not in flags_env:
    os.environ['XLA_FLAGS'] = (flags_env + ' --xla_cpu_enable_concurrency_optimized_scheduler=false').strip()


def benchmark_backbone(name, image_size, batch_size, dtype, steps=5):
  """Forward + backward (train mode, a mean-of-features loss) of one backbone on one global batch."""
  import jax
  import jax.numpy as jnp
  import optax
  from jssl.methods.base import DTYPES
  from jssl.models import build_backbone
  from jssl.train import sharding
  mesh = sharding.make_mesh()
  kwargs = {'img_size': image_size} if name.startswith(('vit', 'swin')) else {}
  model = build_backbone(name, dtype=DTYPES[dtype], **kwargs)
  images = jax.device_put(jnp.asarray(np.random.default_rng(0).normal(size=(batch_size, image_size, image_size, 3)),
                                      jnp.float32), sharding.batch_sharding(mesh))
  variables = jax.jit(model.init, static_argnames='train')(jax.random.key(0), images[:1], train=False)
  variables = jax.device_put(variables, sharding.replicated(mesh))

  def loss_fn(params, state, x):
    out, new_state = model.apply({'params': params, **state}, x, train=True, mutable=list(state),
                                 rngs={'dropout': jax.random.key(1)})
    return jnp.mean(out[-1].astype(jnp.float32)), new_state

  def step(variables, x):
    params = variables['params']
    state = {k: v for k, v in variables.items() if k != 'params'}
    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x)
    params = jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)  # keep the gradients live
    return {'params': params, **new_state}, {'loss': loss, 'grad_norm': optax.global_norm(grads)}

  head = {'backbone': name, 'image_size': image_size, 'batch_size': batch_size, 'dtype': dtype,
          'params_m': round(sum(x.size for x in jax.tree.leaves(variables['params'])) / 1e6, 2)}
  return time_step(jax.jit(step), variables, images, batch_size, steps, head)


def _flops(stage) -> float:
  cost = stage.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.)) if cost else 0.


def time_step(step_fn, state, batch, batch_size, steps, head):
  """Compile time, XLA cost/memory analysis and the median wall time of `steps` calls of step_fn."""
  import jax
  t0 = time.perf_counter()
  lowered = step_fn.lower(state, batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  flops = _flops(compiled)
  # XLA:GPU's cost analysis counts no convolution FLOPs (cuDNN calls; an H100 read 74 instead of ~3,100 GFLOPs
  # for a ResNet-50 step at batch 256, before and after optimization), so FLOPs/MFU are left out there
  convs_uncounted = jax.devices()[0].platform == 'gpu' and 'convolution' in lowered.as_text()
  if convs_uncounted:
    flops = 0.
  mem = compiled.memory_analysis()
  state, metrics = compiled(state, batch)  # warm-up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  step_s = float(np.median(times))
  devices = jax.devices()
  result = {
      **head, 'devices': len(devices), 'device_kind': devices[0].device_kind,
      'compile_s': round(compile_s, 2), 'ms_per_step': round(step_s * 1e3, 1),
      'img_per_s': round(batch_size / step_s, 1),
      # cost analysis is of the per-device program; the step does that on every device
      'gflops_per_step': round(flops * len(devices) / 1e9, 2) if flops else 'not counted (XLA:GPU convolutions)',
      'achieved_tflops_per_device': round(flops / step_s / 1e12, 3) if flops else None,
      'loss': float(metrics['loss']),
  }
  peak = device_peak_flops(devices[0])
  if peak and flops:
    result['mfu'] = round(flops / step_s / peak, 4)
  if mem is not None:
    result['compiled_memory_mb'] = {
        'arguments': round(mem.argument_size_in_bytes / 2**20, 1), 'outputs': round(mem.output_size_in_bytes / 2**20, 1),
        'temporaries': round(mem.temp_size_in_bytes / 2**20, 1),
        'generated_code': round(mem.generated_code_size_in_bytes / 2**20, 1)}
  stats = devices[0].memory_stats() if hasattr(devices[0], 'memory_stats') else None
  if stats and 'peak_bytes_in_use' in stats:
    result['peak_memory_mb'] = round(stats['peak_bytes_in_use'] / 2**20, 1)
  return result


def benchmark_kmeans(n, d_in, d, k, iterations=20, repeats=3):
  """Seconds for PCA whitening and for one k-means iteration on [n, d_in] random features over all devices."""
  import jax
  import jax.numpy as jnp
  from jssl.parts import clustering
  from jssl.train import sharding
  mesh = sharding.make_mesh()
  rows = clustering.row_sharding(mesh)
  n = -(-n // mesh.size) * mesh.size
  x = jax.jit(lambda key: jax.random.normal(key, (n, d_in), jnp.float32), out_shardings=rows)(jax.random.key(0))
  valid = jax.device_put(jnp.ones((n,), bool), sharding.batch_sharding(mesh))

  def timed(fn):
    jax.block_until_ready(fn())  # compile + warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
      out = jax.block_until_ready(fn())
    return (time.perf_counter() - t0) / repeats, out

  pca_s, y = timed(lambda: clustering.pca_whiten(x, valid, dim=d))
  init = clustering.init_centroids(jax.random.key(1), y, valid, k)
  # kmeans with 1 vs 2 iterations: the difference is one Lloyd iteration (the final assignment pass is common)
  one_s, _ = timed(lambda: clustering.kmeans(y, valid, init, 1, mesh))
  two_s, _ = timed(lambda: clustering.kmeans(y, valid, init, 2, mesh))
  iter_s = max(two_s - one_s, 0.)
  full = 1281167 * 10000 * 256 / (n * k * d)
  total = iter_s * iterations + one_s - iter_s
  sig = lambda v: float(f'{v:.3g}')
  return {'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}', 'features': f'{n} x {d_in} -> {d}',
          'clusters': k, 'pca_whiten_s': sig(pca_s), 'kmeans_iteration_s': sig(iter_s),
          'kmeans_assign_pass_s': sig(one_s - iter_s), f'kmeans_{iterations}_iterations_s': sig(total),
          'imagenet_1.28Mx256_k10000_20it_estimate_s': sig(full * total)}


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  if _KMEANS.value:
    try:
      n, d_in, d, k = (int(v) for v in _KMEANS.value.split(','))
    except ValueError:
      fail(f'--kmeans: expected "N,D_IN,D,K" (integers), got {_KMEANS.value!r}')
    if not 0 < d <= d_in or not 0 < k <= n:
      fail(f'--kmeans: need 0 < D <= D_IN and 0 < K <= N, got {_KMEANS.value!r}')
    result = benchmark_kmeans(n, d_in, d, k)
  elif _BACKBONE.value:
    from jssl.models import BACKBONES
    if _BACKBONE.value not in BACKBONES:
      fail(f"--backbone: unknown backbone '{_BACKBONE.value}'; valid: {', '.join(sorted(BACKBONES))}")
    result = benchmark_backbone(_BACKBONE.value, _IMAGE_SIZE.value, _BATCH_SIZE.value, _DTYPE.value, _STEPS.value)
  else:
    config = config_value(_CONFIG)
    try:
      check_config(config)
    except ConfigError as e:
      fail(str(e))
    if _NUM_RECORDS.value is not None and _NUM_RECORDS.value <= 0:
      fail(f'--num_records must be positive, got {_NUM_RECORDS.value}')
    if _MEMORY_ONLY.value:
      cpu_memory_scheduler()
      result = memory_analysis(config, _NUM_RECORDS.value)
    else:
      result = benchmark(config, _STEPS.value, _NUM_RECORDS.value)
  for k, v in result.items():
    print(f'{k:28s} {v}')
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
