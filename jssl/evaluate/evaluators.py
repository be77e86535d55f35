"""What a run evaluates while it trains and at its end, as big_vision's evaluators: `config.evals` names them, each
entry saying when it runs (`every` steps or `every_epochs`, `at_end`) and its own settings. Each evaluator is a
small object built from the trainer and its entry whose `run(context)` returns a `Report`: results.json entries,
TensorBoard scalars (tags under eval/), lines and table rows to print. The loop calls `run(due, ...)` and knows
nothing of what they compute.

  knn           weighted kNN top-1 / top-5 of the method's features (train split as memory, val split as queries);
                at the end, the trained backbone next to the same backbone at random init
  quick_linear  a linear probe on the same features (standardized, SGD; `evaluate/linear.fit_linear_probe`)
  classifier    val top-1 / top-5 of each of the method's classifier heads (`method.predict`: the linear probe
                and fine-tune evaluator methods)

A new evaluator: a class with `name`, `announce` and `run(context) -> Report`, added to EVALUATORS, and its entry
(defaults) in `jssl.config.base_config().evals` or in the configs that use it. What the features are (the
center-cropped val protocol, `config.eval`: resize, crop, interpolation, batch size, `feature_stage`) is shared by
every evaluator and by the clustering methods' per-epoch features."""
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from jssl import pretrained
from jssl.config import ConfigError
from jssl.data import transforms
from jssl.evaluate import knn
from jssl.evaluate.linear import fit_linear_probe

KNN_KS = (10, 20, 100, 200)  # what --mode=eval reports, as MMSelfSup's knn_classifier


@dataclasses.dataclass
class Table:
  """Rows under a header; tables with the same title and header from several evaluators print as one, their
  notes joined in parentheses after the title."""
  title: str
  header: list
  rows: list
  notes: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Report:
  results: dict = dataclasses.field(default_factory=dict)   # results.json entries
  scalars: dict = dataclasses.field(default_factory=dict)   # TensorBoard: eval/<tag> -> value
  lines: list = dataclasses.field(default_factory=list)     # printed after the tables
  table: Table | None = None


class Features:
  """What kNN and the quick probe read of a state: the method's features (`method.extract`), or, with
  config.eval.feature_stage >= 0, the backbone's map output of that number (its `feature_info`) global-average-
  pooled (ResNet: 0 the stem, 1..4 the stages, MMSelfSup's feat1..feat5; Swin: the stages of its out_indices), for
  pretext tasks whose last stage specializes (Rotation Prediction, Relative Location). One compiled extractor serves
  every state of the run."""

  def __init__(self, trainer):
    self.trainer, self.config = trainer, trainer.config
    self._extractor, self._train_extract = (None, None), (None, None)

  @property
  def stage(self):
    return self.config.eval.get('feature_stage', -1)

  def extract_fn(self):
    """(variables, images) -> [B, D] features."""
    if self.stage < 0:
      return lambda variables, x: self.trainer.method.extract(*variables, x)
    from jssl.methods.base import compute_dtype
    from jssl.models import build_backbone
    from jssl.models.backbone import map_output
    from jssl.models.layers import sobel
    from jssl.models.necks import global_avg_pool
    b = self.config.backbone
    backbone = build_backbone(b.name, dtype=compute_dtype(self.config), **b.get('kwargs', {}))
    output = map_output(backbone, self.stage)
    if output is None:
      maps = [o.index for o in backbone.feature_info() if o.kind == 'map']
      ranged = len(maps) > 2 and maps == list(range(maps[0], maps[-1] + 1))
      valid = ["-1 (the method's features)"] + ([f'{maps[0]}..{maps[-1]}'] if ranged else [str(i) for i in maps])
      raise ValueError(f'config.eval.feature_stage: {self.stage} is not an output of {b.name}; valid: '
                       f'{", ".join(valid)}')
    with_sobel = self.config.model.get('with_sobel', False)
    return lambda variables, x: global_avg_pool(backbone.apply(variables, sobel(x) if with_sobel else x,
                                                               train=False, outputs=(output.name,))[output.name])

  def variables(self, state):
    return (state.params, state.model_state) if self.stage < 0 else pretrained.backbone_subtree(state)

  def of_images(self, state):
    """images -> features under `state`, uncompiled (for tests and tools)."""
    fn, variables = self.extract_fn(), self.variables(state)
    return lambda x: fn(variables, x)

  def __call__(self, state):
    """(train features, train labels, val features, val labels), center-cropped as config.eval says."""
    if self._extractor[0] != self.stage:  # compiled once per run for every state evaluated
      self._extractor = (self.stage, knn.make_extractor(self.extract_fn(), normalizer(self.config), self.trainer.mesh))
    variables, e, t = self.variables(state), self.config.eval, self.trainer
    extract = lambda split: knn.extract_features(self._extractor[1], variables, t.source(split), eval_transform(e),
                                                 e.batch_size, t.mesh)
    return (*extract('train'), *extract('val'))

  def training_set(self, state, extract_fn):
    """Features of the whole training set under `state`, for the clustering methods' epoch-level work:
    (row-sharded [M, D] global array, record index per row, -1 on padding). `extract_fn(params, model_state,
    images)` is jit'd once."""
    t = self.trainer
    if self._train_extract[0] is not extract_fn:
      normalize = normalizer(self.config)
      self._train_extract = (extract_fn, jax.jit(lambda p, s, x: extract_fn(p, s, normalize(x)),
                                                 out_shardings=t.batch_sharding))
    fn, e = self._train_extract[1], self.config.eval
    return knn.extract_sharded(lambda x: fn(state.params, state.model_state, x), t.source('train'),
                               eval_transform(e), e.batch_size, t.mesh)


def normalizer(config):
  mean, std = jnp.asarray(config.data.mean, jnp.float32), jnp.asarray(config.data.std, jnp.float32)
  return lambda x: (x.astype(jnp.float32) / 255. - mean) / std


def eval_transform(e):
  return transforms.ResizeCenterCrop(resize=e.resize, crop=e.crop, interpolation=e.interpolation)


class Context:
  """One evaluation point: the state, its step, whether it is the run's end. The features are extracted once and
  shared by the evaluators that read them; `random_init=True`: those of the run's initial state (same seed)."""

  def __init__(self, trainer, state, step, final):
    self.trainer, self.state, self.step, self.final = trainer, state, step, final
    self.split = trainer.config.data.val_split
    self._features = {}

  def features(self, random_init=False):
    if random_init not in self._features:
      t = self.trainer
      state = t.init_state(jax.random.PRNGKey(t.config.seed)) if random_init else self.state
      self._features[random_init] = t.features(state)
    return self._features[random_init]

  def comparison(self, note, row_name, trained, random_init):
    """The end-of-run table row of a trained / random-init pair of {'top1', ...}."""
    return Table(f'{self.split} split top-1 %', ['', 'trained', 'random init'],
                 [[row_name, f'{trained["top1"]:.2f}', f'{random_init["top1"]:.2f}']], [note])


class Evaluator:
  """When it runs: `every` steps (or `every_epochs`), and at the end when `at_end`."""
  name, announce, compares_random_init = '', '', False

  def __init__(self, trainer, settings):
    self.trainer, self.settings = trainer, settings
    self.every = settings.get('every', 0) or int(settings.get('every_epochs', 0) * trainer.steps_per_epoch)
    self.at_end = settings.get('at_end', False)


class Knn(Evaluator):
  name, announce, compares_random_init = 'knn', 'kNN', True

  def accuracy(self, features, k=None):
    s = self.settings
    return knn.knn_accuracy(*features, k=k or s.k, temperature=s.t, mesh=self.trainer.mesh)

  def run(self, ctx):
    s, stage = self.settings, self.trainer.features.stage
    trained = self.accuracy(ctx.features())
    if not ctx.final:
      return Report(scalars={'knn_top1': trained['top1']},
                    lines=[f'step {ctx.step} | knn top1 {trained["top1"]:.2f} top5 {trained["top5"]:.2f}'])
    random_init = self.accuracy(ctx.features(random_init=True))
    where = f', backbone output {stage}' if stage >= 0 else ''
    return Report(
        results={'knn_top1': trained['top1'], 'knn_top5': trained['top5'], 'knn_top1_random_init': random_init['top1'],
                 'knn_top5_random_init': random_init['top5'], 'knn_k': s.k, 'knn_t': s.t, 'knn_feature_stage': stage},
        scalars={'knn_top1': trained['top1']},
        lines=[f'kNN (k={s.k}{where}) top-1: trained {trained["top1"]:.2f}% | random init '
               f'{random_init["top1"]:.2f}%'],
        table=ctx.comparison(f'kNN k={s.k}{where}', 'kNN', trained, random_init))

  def at_ks(self, ctx, ks=KNN_KS):
    """--mode=eval: one line per k."""
    return [f'step {ctx.step} | kNN (k={k}, T={self.settings.t}) top-1 {r["top1"]:.2f} top-5 {r["top5"]:.2f}'
            for k, r in self.accuracy(ctx.features(), k=ks).items()]


class QuickLinear(Evaluator):
  name, announce, compares_random_init = 'quick_linear', 'a linear probe', True

  def fit(self, features):
    s = self.settings
    return fit_linear_probe(*features, epochs=s.epochs, lr=s.lr, seed=self.trainer.config.seed)

  def run(self, ctx):
    trained = self.fit(ctx.features())
    if not ctx.final:
      return Report(scalars={'linear_top1': trained['top1']},
                    lines=[f'step {ctx.step} | linear probe top1 {trained["top1"]:.2f} top5 {trained["top5"]:.2f}'])
    random_init = self.fit(ctx.features(random_init=True))
    return Report(
        results={'linear_top1': trained['top1'], 'linear_top5': trained['top5'],
                 'linear_top1_random_init': random_init['top1'], 'linear_top5_random_init': random_init['top5'],
                 'linear_epochs': self.settings.epochs},
        scalars={'linear_top1': trained['top1']},
        table=ctx.comparison('linear probe on the same features', 'linear probe', trained, random_init))


class Classifier(Evaluator):
  name = 'classifier'

  def __init__(self, trainer, settings):
    super().__init__(trainer, settings)
    method = trainer.method
    if method.predict is None:
      raise ConfigError(f'config.evals.classifier: method {trainer.config.method} has no classifier heads to '
                        f'evaluate; valid for it: knn, quick_linear')
    self._predictor = None

  def accuracy(self, state):
    """{head name: {'top1', 'top5'}} (%) of each of the method's classifiers on the val split."""
    t, e = self.trainer, self.trainer.config.eval
    if self._predictor is None:
      def top5(variables, x):  # [B, heads, 5] class ids: what the accuracy needs, not [B, heads, classes] logits
        logits = t.method.predict(*variables, x)
        k = min(5, next(iter(logits.values())).shape[-1])
        return jnp.stack([jax.lax.top_k(v.astype(jnp.float32), k)[1] for v in logits.values()], axis=1)
      self._predictor = knn.make_extractor(top5, normalizer(t.config), t.mesh)
    ranked, labels = knn.extract_features(self._predictor, (state.params, state.model_state, state.method_state),
                                          t.source('val'), eval_transform(e), e.batch_size, t.mesh)
    hits = ranked == labels[:, None, None]
    return {name: {'top1': 100. * float(hits[:, i, :1].any(-1).mean()),
                   'top5': 100. * float(hits[:, i].any(-1).mean())}
            for i, name in enumerate(t.method.head_names)}

  def run(self, ctx):
    c, result = self.trainer.config, self.accuracy(ctx.state)
    table = Table(f'step {ctx.step} | {c.method} on the {ctx.split} split ({len(self.trainer.source("val"))} '
                  f'images)', ['head', 'top-1 %', 'top-5 %'],
                  [[name, f'{r["top1"]:.2f}', f'{r["top5"]:.2f}'] for name, r in result.items()])
    scalars = {f'{name}/{k}': r[k] for name, r in result.items() for k in ('top1', 'top5')}
    init = 'random' if c.init.get('random_init', False) or not c.init.get('backbone') else c.init.backbone
    return Report(results={'val': result, 'init': init} if ctx.final else {}, scalars=scalars, table=table)


EVALUATORS = {e.name: e for e in (Knn, QuickLinear, Classifier)}


def build(trainer):
  """The evaluators config.evals names that run at all (every > 0 or at_end), in the config's order."""
  evals = []
  for name, settings in trainer.config.get('evals', {}).items():
    if name not in EVALUATORS:
      raise ConfigError(f"config.evals.{name}: unknown evaluator; valid: {', '.join(EVALUATORS)}")
    evaluator = EVALUATORS[name](trainer, settings)
    if evaluator.every or evaluator.at_end:
      evals.append(evaluator)
  return evals


def due(evals, step):
  """The periodic ones of `evals` whose interval ends at `step` (the run's end calls those with at_end)."""
  return [e for e in evals if e.every and step % e.every == 0]


def run(evals, trainer, state, step, writer, final):
  """Runs `evals` on `state` at `step`; process 0 prints their lines and tables and writes their scalars to
  TensorBoard. Returns their results.json entries."""
  if not evals:
    return {}
  is_main = jax.process_index() == 0
  ctx = Context(trainer, state, step, final)
  if final and is_main:
    what = ' and '.join(e.announce for e in evals if e.announce)
    compared = ', the trained and the random-init backbone' if any(e.compares_random_init for e in evals) else ''
    print(f'evaluating{": " + what if what else ""} on the {ctx.split} split{compared} ...', flush=True)
  reports = [e.run(ctx) for e in evals]
  results = {}
  for r in reports:
    results.update(r.results)
  if is_main:
    tables = {}
    for r in reports:
      if r.table is None:
        continue
      key = (r.table.title, tuple(r.table.header))
      if key in tables:
        tables[key].rows.extend(r.table.rows)
        tables[key].notes.extend(r.table.notes)
      else:
        tables[key] = dataclasses.replace(r.table, rows=list(r.table.rows), notes=list(r.table.notes))
    for t in tables.values():
      print_table(t.title + (f' ({"; ".join(t.notes)})' if t.notes else ''), t.header, t.rows)
    for r in reports:
      for line in r.lines:
        print(line, flush=True)
      for tag, value in r.scalars.items():
        writer.add_scalar(f'eval/{tag}', value, step)
  return results


def evaluate_checkpoint(trainer, state, step):
  """--mode=eval: the classifier heads' val top-1 / top-5 where the method has them, else kNN at k = 10, 20, 100,
  200 (T = config.evals.knn.t), printed by process 0."""
  ctx = Context(trainer, state, step, final=False)
  if trainer.method.predict is not None:
    result = Classifier(trainer, {}).accuracy(state)
    lines = [f'step {step} | {name} top-1 {r["top1"]:.2f} top-5 {r["top5"]:.2f}' for name, r in result.items()]
  else:
    settings = trainer.config.evals.get('knn') or ml_collections.ConfigDict({'k': 20, 't': 0.07})
    lines = Knn(trainer, settings).at_ks(ctx)
  if jax.process_index() == 0:
    print('\n'.join(lines), flush=True)


def print_table(title, header, rows):
  widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
  line = lambda r: ' | '.join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
  print('\n'.join([title, line(header), '-+-'.join('-' * w for w in widths)] + [line(r) for r in rows]), flush=True)
