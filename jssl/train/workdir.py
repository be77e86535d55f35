"""What a run keeps in its workdir besides checkpoints: config.json (the run's config) and results.json, written
atomically and never silently replaced, and the check of a resume's config against the run's config.json.

A resume may change how long the run is and how it is watched (FREE_TO_CHANGE); a change to anything else would
continue the checkpoint as another experiment than the one it records, so it is refused before anything is
restored or written, unless `config.allow_changed` names the field. Kept copies: config.until_step_<N>.json (the
config of the steps up to N) and results.step_<N>.json (the results of step N)."""
import json
import os
import sys
import uuid

from jssl.config import ConfigError

# Fields a resume may change, with a printed notice (a name covers its sub-fields: 'schedule' is schedule.*). Not
# here, hence refused unless config.allow_changed names them: method, backbone, model, data (but workers and
# skip_corrupt_images), batch_size, dtype, seed, init, optimizer (but lr), eval.resize/crop/interpolation (the
# clustering methods' training features; the evaluators' val protocol).
FREE_TO_CHANGE = (
    'epochs', 'total_steps',                      # the run's length
    'optimizer.lr', 'schedule',                   # the learning rate and its schedule
    'log_every', 'checkpoint', 'nonfinite', 'nonfinite_max_skipped',  # logging, checkpoints, what a NaN step does
    'evals', 'eval.batch_size', 'eval.feature_stage',  # what is evaluated, when, and on which features
    # the same, as configs before config.evals named them (a run started then may resume)
    'eval.every', 'eval.every_epochs', 'eval.at_end', 'eval.knn_k', 'eval.knn_t', 'eval.linear_epochs',
    'eval.linear_lr',
    'data.workers', 'data.skip_corrupt_images',   # how the same records are read
    'mesh', 'param_sharding', 'remat',            # layout and memory (a resume on another slice): the same math
)
NOT_COMPARED = ('allow_changed',)  # about one command, not the run


def _covers(prefix, field):
  return field == prefix or field.startswith(prefix + '.')


def flatten(tree, prefix=''):
  """{'a.b': leaf, 'a.c.0.d': leaf, ...} of nested dicts and lists (the JSON form of a config)."""
  if isinstance(tree, dict):
    items = tree.items()
  elif isinstance(tree, list) and tree:
    items = enumerate(tree)
  else:
    return {prefix: tree}
  flat = {}
  for key, value in items:
    flat.update(flatten(value, f'{prefix}.{key}' if prefix else str(key)))
  return flat


ABSENT = '(absent)'


def config_changes(previous: dict, config):
  """[(field, old, new)] where `config` (a ConfigDict) differs from `previous` (a config.json's dict), in field
  order; a field only one of them has shows ABSENT on the other side."""
  old, new = flatten(previous), flatten(json.loads(config.to_json_best_effort()))
  return [(k, old.get(k, ABSENT), new.get(k, ABSENT)) for k in sorted(old.keys() | new.keys())
          if old.get(k, ABSENT) != new.get(k, ABSENT) and not any(_covers(p, k) for p in NOT_COMPARED)]


def _show(value):
  text = value if value is ABSENT else json.dumps(value)
  return text if len(text) <= 60 else text[:57] + '...'


def check_resume(workdir: str, config, step: int):
  """The fields where `config` differs from the workdir's config.json, for a resume from checkpoint `step`:
  [(field, old, new, why)] with why 'free' or 'allowed', or None where the workdir has no config.json. Raises
  ConfigError if one changes what is trained and config.allow_changed does not name it. Reads only config.json."""
  path = os.path.join(workdir, 'config.json')
  text = read_text(path)
  if text is None:
    return None  # a workdir from before config.json, or one whose config.json was deleted: nothing to check
  try:
    previous = json.loads(text)
  except json.JSONDecodeError as e:
    raise ConfigError(f'{path}: not valid JSON ({e}); it is the config the resume (step {step}) is checked '
                      f'against: put the run\'s config back, or move the file away to resume unchecked') from None
  allowed = [f.strip().removeprefix('config.') for f in str(config.get('allow_changed', '')).split(',') if f.strip()]
  changes, refused = [], []
  for field, old, new in config_changes(previous, config):
    if any(_covers(p, field) for p in FREE_TO_CHANGE):
      changes.append((field, old, new, 'free'))
    elif any(_covers(p, field) for p in allowed):
      changes.append((field, old, new, 'allowed'))
    else:
      refused.append((field, old, new))
  if refused:
    shown = ', '.join(f'config.{f} {_show(o)} -> {_show(n)}' for f, o, n in refused[:3])
    more = f' (and {len(refused) - 3} more)' if len(refused) > 3 else ''
    # the fields to name, or, where many changed (rather another config than a tweak), their groups
    names = ','.join(f for f, _, _ in refused) if len(refused) <= 3 else \
        ','.join(sorted({f.split('.')[0] for f, _, _ in refused}))
    raise ConfigError(f'resume of {workdir} (step {step}) refused, the config changes what is trained: {shown}'
                      f'{more} (against the run\'s {path}); resume with the run\'s config, or continue the '
                      f'checkpoint anyway with --config.allow_changed={names}, or use a new --workdir')
  return changes


def print_changes(changes, workdir):
  """What a resume changes (check_resume's list), printed; None: there was no config.json to check it against."""
  if changes is None:
    print(f'jssl: warning: {workdir} has checkpoints but no config.json: the resume could not be checked against '
          f'the config of the run', file=sys.stderr, flush=True)
    return
  if not changes:
    return
  path = os.path.join(workdir, 'config.json')
  print(f'the config differs from the run\'s {path} in {len(changes)} field{"s" * (len(changes) != 1)}:\n' +
        '\n'.join(f'  config.{f}: {_show(o)} -> {_show(n)}' + (' (config.allow_changed)' if why == 'allowed' else '')
                  for f, o, n, why in changes), flush=True)


# --- files ----------------------------------------------------------------------------------------------------
def _is_local(path):
  return '://' not in path


def read_text(path):
  """The file's text, or None if there is none."""
  if _is_local(path):
    if not os.path.isfile(path):
      return None
    with open(path) as f:
      return f.read()
  from etils import epath
  path = epath.Path(path)
  return path.read_text() if path.exists() else None


def write_atomic(path: str, text: str):
  """Readers see the old file or the whole new one, never a part, whatever stops the writer. Local: a temporary
  file in the same directory, fsync'd, then os.replace (and the directory fsync'd, so the rename survives a power
  loss). gs:// and other object stores: one object upload, which their readers see whole or not at all."""
  if not _is_local(path):
    from etils import epath
    epath.Path(path).write_text(text)
    return
  directory = os.path.dirname(os.path.abspath(path))
  tmp = os.path.join(directory, f'.{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp')
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as to a plain open()
  try:
    with os.fdopen(fd, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  dir_fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(dir_fd)
  finally:
    os.close(dir_fd)


def replace_keeping(path: str, text: str, keep_as: str):
  """Writes `text` to `path`. An existing `path` with other content is first copied to `keep_as` (or `keep_as`
  with .1, .2, ... before its extension where that name holds yet other content). Returns the kept copy's path,
  or None where nothing had to be kept."""
  old = read_text(path)
  if old == text:
    return None
  kept = None
  if old is not None:
    stem, ext = os.path.splitext(keep_as)
    for i in range(1000):
      kept = f'{stem}.{i}{ext}' if i else keep_as
      existing = read_text(kept)
      if existing is None or existing == old:
        break
    if existing is None:
      write_atomic(kept, old)  # the copy first, then the replacement: at every moment one of them holds it
  write_atomic(path, text)
  return kept


def write_config(workdir: str, config, step: int):
  """config.json of a run accepted to start or resume at `step`; the previous one, if it differs, is kept as
  config.until_step_<step>.json (printed)."""
  kept = replace_keeping(os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=2),
                         os.path.join(workdir, f'config.until_step_{step}.json'))
  if kept:
    print(f'the previous config.json is kept as {kept}', flush=True)


def write_results(workdir: str, results: dict):
  """results.json. One that holds other results (another step, other numbers; the time a run took aside) is kept
  as results.step_<its step>.json (printed); one that holds the same is left as it is."""
  path = os.path.join(workdir, 'results.json')
  old = _read_json(path)
  timing = 'train_seconds_this_run'
  same = lambda a, b: {k: v for k, v in a.items() if k != timing} == {k: v for k, v in b.items() if k != timing}
  if isinstance(old, dict) and same(old, json.loads(json.dumps(results))):
    return
  old_step = old.get('steps', 'unknown') if isinstance(old, dict) else 'unknown'
  kept = replace_keeping(path, json.dumps(results, indent=2), os.path.join(workdir, f'results.step_{old_step}.json'))
  if kept:
    print(f'the previous results.json (step {old_step}) is kept as {kept}', flush=True)


def _read_json(path):
  """The file's JSON, None where there is no file, the text itself where it is not valid JSON."""
  text = read_text(path)
  if text is None:
    return None
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return text


def checkpoint_steps(workdir: str):
  """The steps of WORKDIR/checkpoints that look complete, without orbax (fast: for refusing early). Local: the
  directories named by a number (orbax writes into `<step>.orbax-checkpoint-tmp-*` and renames when done); object
  stores: those that also hold orbax's commit_success.txt."""
  path = os.path.join(workdir, 'checkpoints')
  if _is_local(path):
    if not os.path.isdir(path):
      return []
    return sorted(int(n) for n in os.listdir(path) if n.isdigit() and os.path.isdir(os.path.join(path, n)))
  from etils import epath
  path = epath.Path(path)
  if not path.exists():
    return []
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and (p / 'commit_success.txt').exists())
