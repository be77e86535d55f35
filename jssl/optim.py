"""Optimizers and learning-rate schedules from `config.optimizer` / `config.schedule`, built from optax parts.

The recipes of the reference (MMSelfSup) translate as:
- LARS (SimCLR, BYOL, Barlow Twins): `optax.lars`; parameters with ndim <= 1 (BatchNorm scale/bias, biases) are
  excluded from both weight decay and the trust-ratio adaptation (MMSelfSup's `lars_exclude` + `decay_mult=0`);
  `excluded_lr_mult` scales their learning rate (MMSelfSup's `lr_mult` on the same keys).
  optax applies the learning rate before the momentum trace and takes the trust ratio of (g + wd * w);
  MMSelfSup's LARS applies lr after momentum and uses |g| + wd |w|. Identical for a constant lr, and the
  standard JAX formulation otherwise.
- AdamW (MAE, MoCo v3, ...): `optax.adamw` with a weight-decay mask (no decay for norms, biases and the names in
  `no_decay_names`, e.g. pos_embed / cls_token / mask_token as in MAE).
- SGD with momentum: `optax.sgd` + masked `add_decayed_weights` (coupled L2, like torch.optim.SGD).
- `decay_mult` (SGD): {name: multiplier}: parameters under a key `name` decay at weight_decay * multiplier
  (MMSelfSup's paramwise `custom_keys={name: dict(decay_mult=...)}`; Relative Location's neck and head: 5).
- `fixed_lr_names`: parameters under these keys get the same optimizer at the constant base lr (SimSiam's
  predictor, MMSelfSup's `fix_lr` + SimSiamHook), via `optax.multi_transform`.
- `no_momentum_names`: parameters under these keys use the optimizer without momentum (MMSelfSup's
  `paramwise_options={'\\Ahead.': dict(momentum=0.)}` of DeepCluster / ODC, whose classifier is re-initialized).
- `lr_mult_names` / `lr_mult`: the updates of parameters under these keys are scaled by `lr_mult` (MMSelfSup's
  `paramwise_cfg.custom_keys={name: dict(lr_mult=...)}`; for SGD/LARS/AdamW scaling the update is scaling the lr,
  decoupled decay included), e.g. a predictor at 10x the lr.
- `layer_decay` / `layer_decay_kind` (the backbone's family: 'vit' | 'swin' | 'resnet'): layer-wise lr decay of the
  fine-tune recipes (mmpretrain's LearningRateDecayOptimWrapperConstructor): each parameter under
  params['backbone'] has the lr multiplier layer_decay ** (L + 1 - layer_id), its layer id as the family numbers
  it (its `layer_ids`, mmpretrain's get_layer_depth): for a ViT / Swin, L is the number of transformer blocks; the
  stem (patch embedding, cls token, ViT pos_embed) is layer 0, block i of the whole network layer i + 1 (Swin:
  counted across stages; a patch merging takes the id of the last block before it), everything else (final norms,
  Swin's absolute_pos_embed) and all parameters outside the backbone (the head) L + 1, i.e. multiplier 1.
  `layer_decay_scales` gives the tree.
  The fine-tune recipes' weight decay: none for 1-D params (norms, biases, layer scales, q/v biases) and
  FINETUNE_NO_DECAY_NAMES. docs/layer_decay.md has the details and each recipe's hyper-parameters.
Schedules are linear warmup from `lr * warmup_start_factor` followed by cosine annealing to `min_lr`, a constant,
or `step`: lr times `gamma` at each of `milestones` (epochs; MoCo v1's 120/160 and the linear probes').
"""

import flax.traverse_util
import jax
import optax

from jssl.models import FAMILIES

OPTIMIZERS = ('adamw', 'lars', 'sgd')
SCHEDULES = ('cosine', 'constant', 'step')
# No weight decay in the fine-tune recipes (MAE, CAE, MaskFeat, SimMIM), with the 1-D params (exclude_1d)
FINETUNE_NO_DECAY_NAMES = ('pos_embed', 'cls_token', 'absolute_pos_embed', 'relative_position_bias_table')


def decay_mask(params, no_decay_names=(), exclude_1d=True):
  """True where weight decay (and LARS adaptation) applies."""
  flat = flax.traverse_util.flatten_dict(params)

  def decays(path, x):
    if exclude_1d and x.ndim <= 1:
      return False
    return not any(name in path for name in no_decay_names)

  return flax.traverse_util.unflatten_dict({k: decays(k, v) for k, v in flat.items()})


def add_decayed_weights(weight_decay, mask, params, decay_mult=None):
  """Coupled L2 (torch SGD's weight_decay) where `mask` is True; parameters under a key of `decay_mult` decay at
  weight_decay * decay_mult[key]."""
  if not decay_mult:
    return optax.add_decayed_weights(weight_decay, mask)
  group = jax.tree_util.tree_map_with_path(
      lambda p, _: next((k.key for k in p if getattr(k, 'key', None) in decay_mult), ''), params)
  in_group = lambda name: jax.tree.map(lambda m, g: bool(m) and g == name, mask, group)
  return optax.chain(optax.add_decayed_weights(weight_decay, in_group('')),
                     *[optax.add_decayed_weights(weight_decay * mult, in_group(name))
                       for name, mult in decay_mult.items()])


def layer_ids(backbone, kind):
  """(tree of layer ids shaped like the `backbone` params, L + 1) as the family `kind` numbers them (its
  `layer_ids`: mmpretrain's `get_layer_depth` on jssl's names, L counted in the tree)."""
  if kind not in FAMILIES:
    raise ValueError(f"config.optimizer.layer_decay_kind: unknown kind '{kind}'; valid: {', '.join(FAMILIES)}")
  return FAMILIES[kind].layer_ids(backbone)


def layer_decay_scales(params, decay_rate, kind, backbone_key='backbone'):
  """Tree of lr multipliers shaped like `params`: decay_rate ** (L + 1 - layer_id) under params[backbone_key]
  (see `layer_ids`), 1 for everything else (the head)."""
  if backbone_key not in params:
    raise ValueError(f"config.optimizer.layer_decay: the params have no '{backbone_key}' subtree (top-level keys: "
                     f"{', '.join(map(str, params))})")
  ids, last = layer_ids(params[backbone_key], kind)
  scales = {k: jax.tree.map(lambda _: 1., v) for k, v in params.items() if k != backbone_key}
  scales[backbone_key] = jax.tree.map(lambda i: float(decay_rate) ** (last - i), ids)
  return scales


def scale_by_tree(scales):
  """Multiplies each update by its leaf of `scales` (a tree of floats shaped like the params)."""
  def update(updates, state, params=None):
    del params
    # mapped over `scales` first so that masked-out subtrees (optax.MaskedNode, no leaves) pass through as they are
    return jax.tree.map(lambda s, u: jax.tree.map(lambda x: x * s, u), scales, updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def build_schedule(opt_cfg, sched_cfg, steps_per_epoch: int, total_steps: int):
  """Learning rate per optimizer step."""
  lr = opt_cfg.lr
  if sched_cfg.name not in SCHEDULES:
    raise ValueError(f"config.schedule.name: unknown schedule '{sched_cfg.name}'; valid: {', '.join(SCHEDULES)}")
  warmup_steps = int(round(sched_cfg.warmup_epochs * steps_per_epoch))
  warmup_steps = min(warmup_steps, total_steps)
  if sched_cfg.name == 'constant':
    main = optax.constant_schedule(lr)
  elif sched_cfg.name == 'step':
    milestones = sched_cfg.get('milestones', ())
    if not milestones or list(milestones) != sorted(milestones):
      raise ValueError(f'config.schedule.milestones: the step schedule needs increasing epochs, got {milestones}')
    # join_schedules restarts the count after warmup, so the boundaries are relative to its end
    boundaries = [int(round(m * steps_per_epoch)) - warmup_steps for m in milestones]
    main = optax.piecewise_constant_schedule(lr, {b: sched_cfg.get('gamma', 0.1) for b in boundaries})
  else:
    main = optax.cosine_decay_schedule(lr, max(total_steps - warmup_steps, 1), alpha=sched_cfg.min_lr / lr if lr else 0.)
  if warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(lr * sched_cfg.warmup_start_factor, lr, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def build_optimizer(opt_cfg, schedule, params):
  """optax GradientTransformation for `config.optimizer` (clipping and accumulation included)."""
  name = opt_cfg.name
  mask = decay_mask(params, tuple(opt_cfg.get('no_decay_names', ())), opt_cfg.get('exclude_1d_from_decay', True))

  decay_mult = dict(opt_cfg.get('decay_mult', {}))
  if decay_mult and name != 'sgd':
    raise ValueError(f"config.optimizer.decay_mult: supported with the sgd optimizer only, not '{name}'")

  def make(lr, momentum=opt_cfg.get('momentum', 0.)):  # the optimizer at learning rate `lr` (schedule or number)
    if name == 'lars':
      tx = optax.lars(lr, weight_decay=opt_cfg.weight_decay, weight_decay_mask=mask, trust_ratio_mask=mask,
                      momentum=momentum, trust_coefficient=opt_cfg.get('trust_coefficient', 0.001),
                      eps=opt_cfg.get('eps', 1e-8), nesterov=opt_cfg.get('nesterov', False))
    elif name == 'adamw':
      b1, b2 = opt_cfg.betas
      tx = optax.adamw(lr, b1=b1, b2=b2, eps=opt_cfg.get('eps', 1e-8), weight_decay=opt_cfg.weight_decay,
                       mask=mask)
    elif name == 'sgd':
      tx = optax.chain(add_decayed_weights(opt_cfg.weight_decay, mask, params, decay_mult),
                       optax.sgd(lr, momentum=momentum or None, nesterov=opt_cfg.get('nesterov', False)))
    else:
      raise ValueError(f"config.optimizer.name: unknown optimizer '{name}'; valid: {', '.join(OPTIMIZERS)}")
    return tx

  fixed_lr = tuple(opt_cfg.get('fixed_lr_names', ()))
  no_momentum = tuple(opt_cfg.get('no_momentum_names', ()))

  def group(path, _):
    keys = [getattr(k, 'key', None) for k in path]
    if any(k in fixed_lr for k in keys):  # e.g. SimSiam's predictor: the constant base lr (MMSelfSup's SimSiamHook)
      return 'fixed'
    if any(k in no_momentum for k in keys):  # e.g. DeepCluster's classifier, re-initialized every epoch
      return 'no_momentum'
    return 'scheduled'
  labels = jax.tree_util.tree_map_with_path(group, params)
  used = set(jax.tree.leaves(labels))
  if used <= {'scheduled'}:
    tx = make(schedule)
  else:
    groups = {'scheduled': lambda: make(schedule), 'fixed': lambda: make(opt_cfg.lr),
              'no_momentum': lambda: make(schedule, momentum=0.)}
    tx = optax.multi_transform({g: groups[g]() for g in sorted(used)}, labels)
  excluded_lr_mult = opt_cfg.get('excluded_lr_mult', 1.)
  if excluded_lr_mult != 1.:  # e.g. Barlow Twins: BN and biases (the decay-excluded params) at lr x 0.024
    tx = optax.chain(tx, optax.masked(optax.scale(excluded_lr_mult), jax.tree.map(lambda m: not m, mask)))
  mult_names, mult = tuple(opt_cfg.get('lr_mult_names', ())), opt_cfg.get('lr_mult', 1.)
  if mult_names and mult != 1.:
    scaled = jax.tree_util.tree_map_with_path(
        lambda p, _: any(getattr(k, 'key', None) in mult_names for k in p), params)
    tx = optax.chain(tx, optax.masked(optax.scale(mult), scaled))
  layer_decay = opt_cfg.get('layer_decay', None)
  if layer_decay is not None and layer_decay != 1.:
    if not 0. < layer_decay <= 1.:
      raise ValueError(f'config.optimizer.layer_decay: expected a rate in (0, 1], got {layer_decay}')
    # Scaling a parameter's update by s is scaling its lr by s: AdamW's update is -lr * (adam step + wd * w), so
    # the decoupled decay follows the layer's lr too, as in torch's AdamW with one lr per param group (mmpretrain's
    # LearningRateDecayOptimWrapperConstructor); SGD's and LARS's momentum traces are linear in the step.
    scales = layer_decay_scales(params, layer_decay, opt_cfg.get('layer_decay_kind', None))
    tx = optax.chain(tx, scale_by_tree(scales))
  frozen = tuple(opt_cfg.get('frozen_names', ()))
  if frozen:  # e.g. MoCo v3's patch embedding: no update at all
    labels = jax.tree_util.tree_map_with_path(
        lambda p, _: 'frozen' if any(getattr(k, 'key', None) in frozen for k in p) else 'train', params)
    tx = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)
  if opt_cfg.get('grad_clip_norm'):
    tx = optax.chain(optax.clip_by_global_norm(opt_cfg.grad_clip_norm), tx)
  if opt_cfg.get('grad_accum_steps', 1) > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=opt_cfg.grad_accum_steps)
  return tx
