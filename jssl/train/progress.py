"""What a run says while it trains: the progress line (step, epoch, loss, lr, img/s, ETA), TensorBoard scalars
(train/*; the evaluators write eval/*), and its last line, where everything it wrote is. Every process calls in
step (the corrupt-image count is summed over processes); process 0 prints and writes."""
import os
import time

import jax

from jssl.data import loader


class Progress:

  def __init__(self, workdir, config, schedule, total_steps, steps_per_epoch, step):
    self.workdir, self.config, self.schedule = workdir, config, schedule
    self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
    self.is_main = jax.process_index() == 0
    self.writer = summary_writer(workdir) if self.is_main else None
    self.start_time = self.last_time = time.time()
    self.last_step = step

  def say(self, line):
    if self.is_main:
      print(line, flush=True)

  def compiled(self, metrics, step):
    """After the run's first step, which compiled: img/s and ETA count from its end."""
    jax.block_until_ready(metrics)
    self.last_time, self.last_step = time.time(), step

  def log(self, step, metrics, nonfinite, corrupt_images):
    c = self.config
    metrics = {**jax.device_get(metrics), 'nonfinite_steps': nonfinite}
    if c.data.get('skip_corrupt_images'):  # replaced so far in this run, all processes -> train/corrupt_images
      metrics['corrupt_images'] = loader.sum_over_processes(corrupt_images)
    now, timed = time.time(), step - self.last_step  # timed: 0 on the compiling first step itself
    lr = float(self.schedule((step - 1) // c.optimizer.get('grad_accum_steps', 1)))
    if timed:
      img_s = timed * c.batch_size / (now - self.last_time)
      eta = (self.total_steps - step) * (now - self.last_time) / timed
    self.last_time, self.last_step = now, step
    if not self.is_main:
      return
    speed = f' | {img_s:.1f} img/s | ETA {hms(eta)}' if timed else ''
    skipped = f' | skipped {nonfinite} non-finite steps' if nonfinite else ''
    if metrics.get('corrupt_images'):
      skipped += f' | {metrics["corrupt_images"]} unreadable images replaced'
    print(f'step {step}/{self.total_steps} | epoch {step / self.steps_per_epoch:.2f} | '
          f'loss {metrics["loss"]:.4f} | lr {lr:.3g}{speed}{skipped}', flush=True)
    for k, v in metrics.items():  # NaN/inf too (config.nonfinite='skip'): what the step computed
      self.writer.add_scalar(f'train/{k}', float(v), step)
    self.writer.add_scalar('train/lr', lr, step)
    if timed:
      self.writer.add_scalar('train/img_per_sec', img_s, step)

  def close(self, results_written):
    """The run's last line: where its results, checkpoints and TensorBoard events are."""
    if not self.is_main:
      return
    self.writer.close()
    w = self.workdir
    results = f'results: {os.path.join(w, "results.json")}' if results_written else \
        'results.json: written when the run ends'
    print(f'{results} | checkpoints: {os.path.join(w, "checkpoints")} | TensorBoard events: '
          f'{os.path.join(w, "tensorboard")}', flush=True)


def summary_writer(workdir):
  from tensorboardX import SummaryWriter  # pure-python event writer, no TensorFlow needed
  return SummaryWriter(os.path.join(workdir, 'tensorboard'))


def hms(seconds):
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'
