"""The Method interface, its defaults, and the registry of methods.

A method is a small object around Flax modules (docs/architecture.md shows where it sits):

    Method(config, total_steps, steps_per_epoch, num_records)         # the run's length and the dataset's size,
                                                                     # for in-method schedules and memory banks
    init(rng, batch) -> (params, model_state, method_state)
    loss(params, model_state, method_state, batch, rng, step) -> (loss, (metrics, model_state, method_state))
    after_step(params, method_state, step) -> method_state          # EMA targets, queues, memory banks
    extract(params, model_state, images) -> features [B, D]          # for kNN / linear eval / export

`batch['views']` is a tuple of normalized float images [B, H, W, C] (global arrays, augmented on device);
`model_state` holds Flax mutable collections (batch_stats); `method_state` holds what gradients don't train, built
from jssl/parts/ (EMA targets, queues, memory banks, clustering).

`Method` below gives the defaults for a method around one Flax module `self.net` with a `features(images)` method
(`BackboneNet`'s: the pooled last backbone output, what kNN / linear evaluation / export read), so that a method
file holds its algorithm:
`init` (the net at the first view, no method state; `init_net` for other inputs), `forward` (a train-mode forward
returning the moved BatchNorm statistics), an identity `after_step` and `extract` (`self.net.features`).

Optional capabilities, None on `Method` (head_names: empty) and defined only by the methods that have them; the
loop and the evaluators ask `method.<name> is not None`:

    predict(params, model_state, method_state, images) -> {head name: logits [B, classes]}
    head_names: the heads' names, in the order predict returns them  # evaluators (jssl/evaluate/: linear probe,
                                                                     # fine-tune); evals.classifier scores them
    on_epoch(state, epoch, trainer) -> (state, summary line)          # epoch-level work before every epoch, on the
                                                                     # whole TrainState (DeepCluster's clustering);
                                                                     # trainer.features.training_set gives the
                                                                     # training set's features, row-sharded
    epoch_indices(method_state, epoch, seed) -> int array | None     # the record order the epoch reads (None: a
                                                                     # plain shuffle), a function of the state so
                                                                     # that a resumed run reads the same plan

Adding a method: jssl/methods/<name>.py defining `Method` (the registry finds it by its file name), configs/<name>.py
and tests/methods/test_<name>.py.
"""
import importlib
import os
import pkgutil
from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jssl.models.necks import global_avg_pool

# A method is the module jssl/methods/<name>.py defining `Method`, imported only when used (so a method's deps load
# only then). ALIASES: config names served by another method's module (MoCo v1 is MoCo v2 with other options).
# EVALUATORS: supervised protocols on a pretrained backbone that the same loop trains (jssl/evaluate/).
ALIASES = {'mocov1': 'mocov2'}
EVALUATORS = {'linear_probe': 'jssl.evaluate.linear', 'finetune': 'jssl.evaluate.finetune'}
_MODULES = [m.name for m in pkgutil.iter_modules([os.path.dirname(__file__)]) if m.name != 'base']
METHODS = {**{name: f'jssl.methods.{ALIASES.get(name, name)}'
              for name in sorted(_MODULES + [a for a, m in ALIASES.items() if m in _MODULES])}, **EVALUATORS}

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def split_variables(variables):
  """Flax variables -> (params, model_state: the other collections, e.g. batch_stats)."""
  model_state = dict(variables)
  return model_state.pop('params'), model_state


class Method:
  """Defaults of the protocol for a method whose network is `self.net` (see the module docstring)."""
  net: nn.Module
  # optional capabilities (the module docstring): None where a method does not have them
  predict: Callable | None = None
  head_names: Sequence[str] = ()
  on_epoch: Callable | None = None
  epoch_indices: Callable | None = None

  def init_net(self, rng, *inputs):
    """(params, model_state) of `self.net` initialized at `inputs`, in eval mode."""
    return split_variables(self.net.init(rng, *inputs, train=False))

  def init(self, rng, batch):
    return (*self.init_net(rng, batch['views'][0]), {})

  def forward(self, params, model_state, *inputs, **kwargs):
    """`self.net` in train mode: (outputs, model_state with the BatchNorm statistics the forward moved)."""
    out, new_state = self.net.apply({'params': params, **model_state}, *inputs, train=True,
                                    mutable=list(model_state), **kwargs)
    return out, dict(new_state)

  def after_step(self, params, method_state, step):
    return method_state

  def extract(self, params, model_state, images):
    return self.net.apply({'params': params, **model_state}, images, method='features')


class BackboneNet(nn.Module):
  """A network around a `backbone` (its params: 'backbone'); `features`, what kNN / linear evaluation / export
  read, is the global-average-pooled last backbone output, in eval mode. Methods' networks extend it."""
  backbone: nn.Module

  def features(self, images):
    return global_avg_pool(self.backbone(images, train=False)[-1])


class BackboneNeck(BackboneNet):
  """backbone -> neck (projector) on the last backbone output. Params: {'backbone': ..., 'neck': ...}."""
  neck: nn.Module

  def __call__(self, images, train: bool = True):
    return self.neck(self.backbone(images, train=train)[-1], train=train)


def compute_dtype(config):
  if config.dtype not in DTYPES:
    raise ValueError(f"config.dtype: unknown dtype '{config.dtype}'; valid: {', '.join(DTYPES)}")
  return DTYPES[config.dtype]


def build_method(config, total_steps: int = 0, steps_per_epoch: int = 0, num_records: int = 0) -> Method:
  """`total_steps` (micro-steps of the whole run) and `steps_per_epoch` feed schedules inside a method (BYOL's
  momentum, SwAV's queue start); `num_records` (the training set's size) sizes per-image memory banks (NPID)."""
  if config.method not in METHODS:
    raise ValueError(f"config.method: unknown method '{config.method}'; valid: {', '.join(sorted(METHODS))}")
  return importlib.import_module(METHODS[config.method]).Method(
      config, total_steps=total_steps, steps_per_epoch=steps_per_epoch, num_records=num_records)
