"""config.evals: the evaluators a run calls are built from the config (unknown names and a classifier on a method
without heads are one-line errors), run when due, and print, write and return what their Reports say: the tables
of several evaluators with the same header as one."""
import types

import pytest

from jssl.config import ConfigError, load_config_file
from jssl.evaluate import evaluators
from jssl.train.loop import Trainer
from tests.conftest import apply_overrides


def small_trainer(**overrides):
  c = apply_overrides(load_config_file('configs/simclr.py:demo'), {
      'backbone.kwargs.num_filters': 8, 'model.neck_hid_channels': 16, 'model.neck_out_channels': 8, **overrides})
  return Trainer(c, None, num_records=1280)


def test_the_config_says_which_evaluators_run_and_when():
  t = small_trainer(**{'evals.knn.every_epochs': 2, 'evals.quick_linear.every': 5})
  assert [(e.name, e.every, e.at_end) for e in t.evals] == [('knn', 2 * 10, True), ('quick_linear', 5, True)]
  assert [e.name for e in evaluators.due(t.evals, 10)] == ['quick_linear']
  assert [e.name for e in evaluators.due(t.evals, 20)] == ['knn', 'quick_linear']
  assert evaluators.due(t.evals, 7) == []
  off = small_trainer(**{'evals.knn.at_end': False, 'evals.quick_linear.at_end': False})
  assert off.evals == []


def test_unknown_evaluator_and_a_classifier_without_heads_are_named():
  c = load_config_file('configs/simclr.py:demo')
  c.evals.unlock()
  c.evals.knn_typo = {'at_end': True}
  with pytest.raises(ConfigError, match=r"config.evals.knn_typo: unknown evaluator; valid: knn, quick_linear, "
                                        r"classifier"):
    Trainer(c, None, num_records=1280)
  c = load_config_file('configs/simclr.py:demo')
  c.evals.unlock()
  c.evals.classifier = {'at_end': True}
  with pytest.raises(ConfigError, match='config.evals.classifier: method simclr has no classifier heads'):
    Trainer(c, None, num_records=1280)


class Stub(evaluators.Evaluator):
  def __init__(self, name, announce, report):
    self.name, self.announce, self.compares_random_init, self.report = name, announce, True, report
    self.every, self.at_end = 0, True

  def run(self, ctx):
    assert ctx.final and ctx.step == 7
    return self.report


def test_run_prints_one_table_per_header_and_returns_every_result(capsys):
  table = lambda note, row: evaluators.Table('test split top-1 %', ['', 'trained', 'random init'], [row], [note])
  a = Stub('a', 'kNN', evaluators.Report(results={'a': 1}, scalars={'a_top1': 50.}, lines=['a line'],
                                         table=table('kNN k=20', ['kNN', '1.00', '2.00'])))
  b = Stub('b', 'a linear probe', evaluators.Report(results={'b': 2}, scalars={'b_top1': 60.},
                                                    table=table('linear probe on the same features',
                                                                ['linear probe', '3.00', '4.00'])))
  written = []
  writer = types.SimpleNamespace(add_scalar=lambda tag, value, step: written.append((tag, value, step)))
  trainer = types.SimpleNamespace(config=types.SimpleNamespace(data=types.SimpleNamespace(val_split='test')))
  assert evaluators.run([a, b], trainer, None, 7, writer, final=True) == {'a': 1, 'b': 2}
  assert capsys.readouterr().out.splitlines() == [
      'evaluating: kNN and a linear probe on the test split, the trained and the random-init backbone ...',
      'test split top-1 % (kNN k=20; linear probe on the same features)',
      '             | trained | random init',
      '-------------+---------+------------',
      'kNN          |    1.00 |        2.00',
      'linear probe |    3.00 |        4.00',
      'a line']
  assert written == [('eval/a_top1', 50., 7), ('eval/b_top1', 60., 7)]
  assert evaluators.run([], trainer, None, 7, writer, final=True) == {}
