"""The Method interface and the registry of methods.

A method is a small object around Flax modules (see ../shared/design.md):

    Method(config, total_steps, steps_per_epoch, num_records)         # the run's length and the dataset's size,
                                                                     # for in-method schedules and memory banks
    init(rng, batch) -> (params, model_state, method_state)
    loss(params, model_state, method_state, batch, rng, step) -> (loss, (metrics, model_state, method_state))
    after_step(params, method_state, step) -> method_state          # EMA targets, queues, memory banks
    extract(params, model_state, images) -> features [B, D]          # for kNN / linear eval / export

Optional, for evaluators (jssl/evaluate/: linear probe, fine-tune), which the loop then scores on the val split:

    predict(params, model_state, method_state, images) -> {head name: logits [B, classes]}
    head_names: the heads' names, in the order predict returns them

Optional, for epoch-level work (DeepCluster's clustering of the whole training set):

    on_epoch(state, epoch, trainer) -> (state, summary line)          # before every epoch, on the whole TrainState;
                                                                     # trainer.extract_train_features gives the
                                                                     # training set's features, row-sharded
    epoch_indices(method_state, epoch, seed) -> int array | None     # the record order the epoch reads (None: a
                                                                     # plain shuffle), a function of the state so
                                                                     # that a resumed run reads the same plan

`batch['views']` is a tuple of normalized float images [B, H, W, C] (global arrays, augmented on device);
`model_state` holds Flax mutable collections (batch_stats); `method_state` holds what gradients don't train.
"""
import importlib
import os
import pkgutil
from typing import Any, Protocol

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


class Method(Protocol):
  def init(self, rng, batch) -> Any: ...
  def loss(self, params, model_state, method_state, batch, rng, step) -> Any: ...
  def after_step(self, params, method_state, step) -> Any: ...
  def extract(self, params, model_state, images) -> Any: ...


class BackboneNeck(nn.Module):
  """backbone -> neck (projector) on the last backbone output; `features` is the global-average-pooled last
  backbone stage, what kNN / linear evaluation / export use. Params: {'backbone': ..., 'neck': ...}."""
  backbone: nn.Module
  neck: nn.Module

  def __call__(self, images, train: bool = True):
    return self.neck(self.backbone(images, train=train)[-1], train=train)

  def features(self, images):
    return global_avg_pool(self.backbone(images, train=False)[-1])


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
