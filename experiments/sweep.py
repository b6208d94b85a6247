"""Hyperparameter sweep: a population of the article's CNN on Fashion-MNIST.

Run:  python -m experiments.sweep --workdir=runs/sweep
      (8 members: 4 learning rates x 2 weight decays, adamw, 3 epochs on
      3200 training examples)
Any:  python -m experiments.sweep --config.sweep_learning_rate=1e-3,3e-3 \
        --config.sweep_weight_decay=0 --config.sweep_seed=0,1,2 \
        --config.sweep_dropout_rate=0,0.3 --config.sweep_samples=6

Every ``sweep_<field>`` is a comma-separated string of values for the config
field ``<field>`` ('' = not swept); the grid is their product, or
``sweep_samples`` members drawn from it (``sweep_sample_seed``). Seed,
learning rate and weight decay vary inside one population; other fields
split the grid into populations (jaxcls/sweep.py). ``population_mode``:
'vmap', 'unrolled', 'loop' or 'auto' (jaxcls/population.py);
``population_chunk`` caps the members per population (0: fit to memory);
``patience`` > 0 freezes a member after that many epochs without a better
validation score by ``best_by`` (accuracy, or loss). The best member by the
same rule on validation (not swept: one rule ranks them) is scored on test and
written as a normal run, so ``python -m experiments.fashion_mnist
--eval_only`` with the printed overrides, report and predict work on the
workdir; ``sweep.json`` holds every member, ``sweep.png`` the plot.
"""

from experiments import fashion_mnist, report, results
from jaxcls.commands import cli


def get_config():
  c = fashion_mnist.get_config()
  c.optimizer = 'adamw'
  c.lr_schedule = 'constant'  # the article's; the swept rate is the rate
  c.num_epochs = 3
  c.train_examples = 3200  # 50 steps of 64 per epoch: about a minute
  c.sweep_learning_rate = '3e-4,1e-3,3e-3,1e-2'
  c.sweep_weight_decay = '0,1e-1'
  c.sweep_seed = ''
  c.sweep_dropout_rate = ''
  c.sweep_samples = 0  # > 0: that many members drawn from the grid
  c.sweep_sample_seed = 0
  c.population_chunk = 0  # members per population; 0: fit to memory
  c.population_mode = 'auto'  # 'loop' on CPU, 'vmap' on accelerators
  return c


def main(config, workdir: str, log=print) -> dict:
  from jaxcls import sweep

  return sweep.run_sweep(
    config,
    workdir,
    base_config=fashion_mnist.get_config(),
    command='python -m experiments.fashion_mnist',
    plot=report.plot_sweep,
    log=log,
  )


if __name__ == '__main__':
  cli.run(get_config, 'sweep', main=main, measured=results.measured('sweep'))
