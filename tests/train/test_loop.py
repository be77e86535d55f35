"""The training loop's progress lines: img/s and the ETA leave out the run's first step (its compile), and the run
says what it is doing before the first line and where its outputs are after the last."""
import types

from jssl.config import load_config_file
from jssl.train import loop, progress
from tests.conftest import NO_EVALS, apply_overrides


def test_throughput_and_eta_leave_out_the_compiling_first_step(tmp_path, monkeypatch, capsys):
  c = apply_overrides(load_config_file('configs/mae.py:demo'), {  # a one-block ViT: little to compile
      'backbone.kwargs.depth': 1, 'model.decoder_depth': 1, 'batch_size': 32, 'total_steps': 5, 'log_every': 3,
      **NO_EVALS})
  trainer = loop.Trainer(c, str(tmp_path))
  clock = [0.]
  monkeypatch.setattr(progress, 'time', types.SimpleNamespace(time=lambda: clock[0]))
  real_step = trainer.train_step

  def timed_step(state, batch):  # on the loop's clock: the first call (compile) 100 s, every other one 2 s
    clock[0] += 2. if clock[0] else 100.
    return real_step(state, batch)
  trainer.train_step = timed_step
  trainer.run()
  out = capsys.readouterr().out.splitlines()
  # steps 2 and 3 took 2 s each (the 100 s of step 1 counted in neither): 16 img/s, 2 steps left = 4 s
  assert out[0] == 'compiling the train step ...'
  assert out[1].startswith('step 3/5 | ') and out[1].endswith(' | 16.0 img/s | ETA 0m04s'), out[1]
  assert out[2].startswith('step 5/5') and out[2].endswith('| 16.0 img/s | ETA 0m00s'), out[2]
  assert out[-1] == (f'results: {tmp_path}/results.json | checkpoints: {tmp_path}/checkpoints | '
                     f'TensorBoard events: {tmp_path}/tensorboard')
