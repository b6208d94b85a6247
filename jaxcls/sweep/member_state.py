"""A population member's state: its optimizer, its init, and taking it out.

The learning rate and weight decay live in the optimizer state
(``optax.inject_hyperparams``), so one ``tx``, and one compilation, serves
every member; a member's seed gives its init key and step key split exactly
as ``train.train_loop`` does.
"""

import jax
import ml_collections
import optax

from jaxcls import data, optim
from jaxcls.training import run as train


def population_optimizer(
  config, steps_per_epoch: int
) -> optax.GradientTransformation:
  """``optim.create_optimizer``'s chain with lr / weight decay as state.

  ``optim.base_optimizer(inject=True)`` moves the optimizer's numbers into
  ``opt_state.hyperparams``, where :func:`set_member_hyperparams` overwrites
  them per member. A schedule is applied as a unit-peak multiplier after the
  update, which is what optax does with a scheduled learning rate (decoupled
  decay included).

  Args:
    config: the group's single-run config.
    steps_per_epoch: training steps per epoch, for the schedule.

  Returns:
    The optimizer, guarded as ``optim.guard`` guards the single run's.
  """
  opt = optim.base_optimizer(config, 1.0, inject=True)
  if config.lr_schedule != 'constant':
    unit = ml_collections.ConfigDict(config.to_dict())
    unit.learning_rate = 1.0
    opt = optax.chain(
      opt,
      optax.scale_by_schedule(
        optim.learning_rate_schedule(
          unit, optim.optimizer_steps(config, steps_per_epoch)
        )
      ),
    )
  return optim.guard(opt, config)


def set_member_hyperparams(opt_state, learning_rate, weight_decay):
  """Writes one member's lr (and weight decay, if the optimizer has one)."""
  values = {'learning_rate': learning_rate}
  if optax.tree_utils.tree_get(opt_state, 'weight_decay') is not None:
    values['weight_decay'] = weight_decay
  return optax.tree_utils.tree_set(opt_state, **values)


def input_dtype(spec: data.DatasetSpec) -> str:
  """The dummy input's dtype at init, as the single run's: int32 for token
  ids, float32 for pixels (normalised before the model) and features."""
  return 'int32' if spec.input_dtype == 'int32' else 'float32'


def init_member(
  seed,
  learning_rate,
  weight_decay,
  *,
  model,
  tx,
  image_shape,
  ema: bool = False,
  input_dtype: str = 'float32',
):
  """``(state, train_rng)`` of one member, its keys split from ``key(seed)``
  as ``train.train_loop`` splits them; ``input_dtype``: the dummy input's."""
  init_rng, train_rng = jax.random.split(jax.random.key(seed))
  state = train.create_train_state(
    init_rng, model, tx, image_shape, ema, input_dtype
  )
  state = state.replace(
    opt_state=set_member_hyperparams(
      state.opt_state, learning_rate, weight_decay
    )
  )
  return state, train_rng


def take_member(tree, index: int):
  """Member ``index`` of a pytree with a leading member axis."""
  return jax.tree_util.tree_map(lambda x: x[index], tree)


def members(states) -> list:
  """The members' states as a list: a tuple as is, a stacked tree split."""
  if isinstance(states, (list, tuple)):
    return list(states)
  return [take_member(states, i) for i in range(len(states.step))]


def member(states, index: int):
  """Member ``index``'s state, in either layout."""
  if isinstance(states, (list, tuple)):
    return states[index]
  return take_member(states, index)
