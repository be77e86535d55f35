"""TrainState: everything a run needs to continue exactly, as one pytree."""
from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # micro-steps taken (= optimizer steps unless gradients are accumulated)
  params: Any              # trained by gradients
  opt_state: Any
  model_state: Any         # Flax mutable collections, e.g. {'batch_stats': ...}
  method_state: Any        # EMA targets, queues, memory banks: not trained by gradients
  rng: jax.Array           # raw uint32 key; the step's key is fold_in(rng, step), so resume is exact
  # steps whose loss or gradients were NaN/inf: their update was not applied (config.nonfinite says whether the
  # run then stops or goes on); the first such step, for the error message (-1: none)
  nonfinite_steps: jax.Array | None = None
  first_nonfinite_step: jax.Array | None = None
