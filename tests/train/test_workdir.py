"""config.json / results.json in a workdir: a resume's config checked against the run's (free, allowed, refused
fields), atomic writes that keep what they replace, the checkpoint listing that runs without orbax."""
import json
import os

import pytest

from jssl.config import ConfigError, base_config
from jssl.train import workdir


def run_config(**changes):
  c = base_config()
  c.method = 'simclr'
  c.backbone.name = 'resnet18'
  c.optimizer.lr = 0.3
  c.data = {'name': 'digits', 'views': [{'size': 32}, {'size': 32}], 'workers': 0}
  for key, value in changes.items():
    *path, last = key.split('.')
    node = c
    for k in path:
      node = node[int(k)] if isinstance(node, list) else node[k]
    node[int(last) if isinstance(node, list) else last] = value
  return c


def write_run(path, config):
  (path / 'config.json').write_text(config.to_json_best_effort(indent=2))


def test_the_same_config_has_no_changes(tmp_path):
  write_run(tmp_path, run_config())
  assert workdir.check_resume(str(tmp_path), run_config(), 70) == []


def test_length_lr_and_schedule_are_free_to_change(tmp_path):
  write_run(tmp_path, run_config())
  changes = workdir.check_resume(str(tmp_path), run_config(**{
      'optimizer.lr': 0.01, 'epochs': 10, 'schedule.warmup_epochs': 1., 'mesh.data': 4, 'evals.knn.every': 5,
      'allow_changed': 'seed'}), 70)
  assert changes == [('epochs', 200, 10, 'free'), ('evals.knn.every', 0, 5, 'free'), ('mesh.data', -1, 4, 'free'),
                     ('optimizer.lr', 0.3, 0.01, 'free'), ('schedule.warmup_epochs', 0., 1., 'free')]


@pytest.mark.parametrize('changes,shown', [
    ({'backbone.kwargs.num_filters': 64}, 'config.backbone.kwargs.num_filters (absent) -> 64'),
    ({'batch_size': 128}, 'config.batch_size 256 -> 128'),
    ({'data.views.1.size': 16}, 'config.data.views.1.size 32 -> 16'),
    ({'optimizer.momentum': 0.5, 'seed': 1}, 'config.optimizer.momentum (absent) -> 0.5, config.seed 0 -> 1'),
])
def test_what_is_trained_is_refused_naming_the_fields(tmp_path, changes, shown):
  write_run(tmp_path, run_config())
  names = ','.join(k for k in sorted(changes))
  with pytest.raises(ConfigError) as e:
    workdir.check_resume(str(tmp_path), run_config(**changes), 70)
  assert str(e.value) == (
      f'resume of {tmp_path} (step 70) refused, the config changes what is trained: {shown} (against the run\'s '
      f'{tmp_path}/config.json); resume with the run\'s config, or continue the checkpoint anyway with '
      f'--config.allow_changed={names}, or use a new --workdir')


def test_allow_changed_names_fields_or_groups(tmp_path):
  write_run(tmp_path, run_config())
  new = run_config(**{'seed': 1, 'data.views.0.size': 16, 'optimizer.lr': 0.1,
                      'allow_changed': 'config.seed, data.views'})
  assert workdir.check_resume(str(tmp_path), new, 70) == [
      ('data.views.0.size', 32, 16, 'allowed'), ('optimizer.lr', 0.3, 0.1, 'free'), ('seed', 0, 1, 'allowed')]
  with pytest.raises(ConfigError, match=r'refused.*: config\.batch_size 256 -> 8 \(against'):
    workdir.check_resume(str(tmp_path), run_config(**{'seed': 1, 'batch_size': 8, 'allow_changed': 'seed'}), 70)


def test_no_config_json_is_unchecked_and_a_damaged_one_is_refused(tmp_path):
  assert workdir.check_resume(str(tmp_path), run_config(), 70) is None
  (tmp_path / 'config.json').write_text('{"method": "sim')
  with pytest.raises(ConfigError, match=f'{tmp_path}/config.json: not valid JSON'):
    workdir.check_resume(str(tmp_path), run_config(), 70)


def test_write_config_keeps_the_previous_one(tmp_path, capsys):
  workdir.write_config(str(tmp_path), run_config(), 0)
  first = (tmp_path / 'config.json').read_text()
  workdir.write_config(str(tmp_path), run_config(), 0)  # the same: nothing kept
  assert sorted(os.listdir(tmp_path)) == ['config.json'] and capsys.readouterr().out == ''
  workdir.write_config(str(tmp_path), run_config(epochs=10), 70)
  assert (tmp_path / 'config.until_step_70.json').read_text() == first
  assert json.loads((tmp_path / 'config.json').read_text())['epochs'] == 10
  assert capsys.readouterr().out == f'the previous config.json is kept as {tmp_path}/config.until_step_70.json\n'
  workdir.write_config(str(tmp_path), run_config(epochs=20), 70)  # resumed from 70 again: a second copy
  assert json.loads((tmp_path / 'config.until_step_70.1.json').read_text())['epochs'] == 10
  assert (tmp_path / 'config.until_step_70.json').read_text() == first
  assert not [n for n in os.listdir(tmp_path) if n.endswith('.tmp')]


def test_write_results_keeps_other_results_and_leaves_the_same(tmp_path, capsys):
  workdir.write_results(str(tmp_path), {'steps': 110, 'train_seconds_this_run': 70.1, 'knn_top1': 95.0})
  first = (tmp_path / 'results.json').read_text()
  workdir.write_results(str(tmp_path), {'steps': 110, 'train_seconds_this_run': 0.2, 'knn_top1': 95.0})
  assert (tmp_path / 'results.json').read_text() == first and sorted(os.listdir(tmp_path)) == ['results.json']
  assert capsys.readouterr().out == ''
  workdir.write_results(str(tmp_path), {'steps': 220, 'train_seconds_this_run': 60.0, 'knn_top1': 94.0})
  assert (tmp_path / 'results.step_110.json').read_text() == first
  assert json.loads((tmp_path / 'results.json').read_text())['knn_top1'] == 94.0
  assert capsys.readouterr().out == f'the previous results.json (step 110) is kept as {tmp_path}/results.step_110.json\n'


def test_write_atomic_leaves_the_old_file_when_writing_fails(tmp_path):
  path = tmp_path / 'config.json'
  path.write_text('old')
  with pytest.raises(TypeError):
    workdir.write_atomic(str(path), None)  # fails while writing the temporary file
  assert path.read_text() == 'old' and os.listdir(tmp_path) == ['config.json']


def test_checkpoint_steps_lists_complete_steps_only(tmp_path):
  assert workdir.checkpoint_steps(str(tmp_path / 'missing')) == []
  for name in ('10', '20', '30.orbax-checkpoint-tmp-1234'):
    (tmp_path / 'checkpoints' / name).mkdir(parents=True)
  (tmp_path / 'checkpoints' / '40').write_text('')  # not a directory
  assert workdir.checkpoint_steps(str(tmp_path)) == [10, 20]


def test_many_refused_fields_are_summed_up_by_their_groups(tmp_path):
  write_run(tmp_path, run_config())
  new = run_config(**{'method': 'byol', 'seed': 1, 'batch_size': 8, 'dtype': 'bfloat16', 'model.tau': 0.99})
  with pytest.raises(ConfigError, match=r': config\.batch_size 256 -> 8, config\.dtype "float32" -> "bfloat16", '
                     r'config\.method "simclr" -> "byol" \(and 2 more\) \(against .*'
                     r'--config\.allow_changed=batch_size,dtype,method,model,seed, or'):
    workdir.check_resume(str(tmp_path), new, 70)
