"""Hyperparameter sweep: a population of CNNs trained as one vmapped step.

Run:  python -m experiments.sweep --workdir=/tmp/sweep
      (8 members: 4 learning rates x 2 weight decays, adamw, the article's
      CNN on Fashion-MNIST, 3 epochs on 3200 training examples)
Any:  python -m experiments.sweep --config.sweep_learning_rate=1e-3,3e-3 \
        --config.sweep_weight_decay=0 --config.sweep_seed=0,1,2 \
        --config.sweep_dropout_rate=0,0.3 --config.sweep_samples=6

Every ``sweep_<field>`` is a comma-separated string of values for the config
field ``<field>`` ('' = not swept); the grid is their product, or
``sweep_samples`` members drawn from it at random (``sweep_sample_seed``).
Seed, learning rate and weight decay vary inside one compiled population;
other fields (dropout rate, l1, l2, model, ...) split the grid into separate
populations. ``population_chunk`` caps the members per compiled step
(0: as many as fit in half the free memory). ``patience`` > 0 freezes a
member after that many epochs without a better validation accuracy.

Members are ranked on the validation split. Only the best one is scored on
test, and it is written as a normal run: ``workdir/checkpoints/{best,latest}``
and ``results.json``, so ``python -m experiments.fashion_mnist --eval_only``
with the overrides printed at the end (also in ``sweep.json``) and the
report/predict tools work on the workdir. ``sweep.json`` holds every member;
``sweep.png`` plots validation accuracy against the swept values.
"""

import json
import os
import sys

from absl import app, flags

from experiments import fashion_mnist
from jaxcls import cli, config as config_lib


def get_config():
  c = fashion_mnist.get_config()
  c.optimizer = 'adamw'
  c.lr_schedule = 'constant'  # the article's; the swept rate is the rate
  c.num_epochs = 3
  c.train_examples = 3200  # 50 steps of 64 per epoch: minutes on 2 cores
  c.sweep_learning_rate = '3e-4,1e-3,3e-3,1e-2'
  c.sweep_weight_decay = '0,1e-1'
  c.sweep_seed = ''
  c.sweep_dropout_rate = ''
  c.sweep_samples = 0  # > 0: that many members drawn from the grid
  c.sweep_sample_seed = 0
  c.population_chunk = 0  # members per compiled step; 0: fit to memory
  if 'patience' not in c:  # Older base configs lack it.
    c.patience = 0
  return c


def eval_overrides(member_config) -> list:
  """``--config.x=v`` flags that turn fashion_mnist's config into the member's."""
  base = fashion_mnist.get_config().to_dict()
  flags_ = []
  for key, value in sorted(member_config.to_dict().items()):
    if key in config_lib.RUN_ONLY_FIELDS or base.get(key, object()) == value:
      continue
    flags_.append(f'--config.{key}={value}')
  return flags_


def format_table(members: list, swept: list) -> str:
  """Members sorted by validation accuracy, best first, as aligned text."""
  head = ['rank', 'member', *swept, 'best val acc', 'best epoch', 'epochs',
          'status']
  rows = []
  ranked = sorted(members, key=lambda m: -m['best_val_accuracy'])
  for rank, m in enumerate(ranked, 1):
    rows.append([str(rank), str(m['member']),
                 *(f"{m['values'][f]:g}" if isinstance(m['values'][f], float)
                   else str(m['values'][f]) for f in swept),
                 f"{m['best_val_accuracy']:.4f}", str(m['best_epoch']),
                 str(m['epochs_trained']), m['status']])
  widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
  line = lambda r: '| ' + ' | '.join(c.ljust(w) for c, w in zip(r, widths)) + ' |'
  rule = '|' + '|'.join('-' * (w + 2) for w in widths) + '|'
  return '\n'.join([line(head), rule, *map(line, rows)])


def plot_sweep(records: list, swept: dict, path: str) -> None:
  """Left: best validation accuracy against the swept values (a heat map of
  the two fields with most values, averaged over the others; or a curve for
  one field). Right: every member's validation accuracy per epoch."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import numpy as np
  axes_fields = sorted(swept, key=lambda f: -len(swept[f]))[:2]
  others = [f for f in swept if f not in axes_fields]
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
  label = lambda v: f'{v:g}' if isinstance(v, float) else str(v)

  def mean_acc(**fixed):
    accs = [r['best_val_accuracy'] for r in records
            if all(r['values'][k] == v for k, v in fixed.items())]
    return np.mean(accs) if accs else np.nan

  suffix = f' (mean over {", ".join(others)})' if others else ''
  if len(axes_fields) == 2:
    fy, fx = axes_fields
    grid = np.array([[mean_acc(**{fy: y, fx: x}) for x in swept[fx]]
                     for y in swept[fy]])
    image = left.imshow(grid, cmap='viridis', aspect='auto', origin='lower')
    for (i, j), v in np.ndenumerate(grid):
      if v == v:
        left.text(j, i, f'{v:.3f}', ha='center', va='center',
                  color='white' if v < np.nanmean(grid) else 'black')
    left.set_xticks(range(len(swept[fx])), [label(x) for x in swept[fx]])
    left.set_yticks(range(len(swept[fy])), [label(y) for y in swept[fy]])
    left.set_xlabel(fx)
    left.set_ylabel(fy)
    fig.colorbar(image, ax=left, label='best validation accuracy')
  else:
    (fx,) = axes_fields
    left.plot(range(len(swept[fx])), [mean_acc(**{fx: x}) for x in swept[fx]],
              'o-')
    left.set_xticks(range(len(swept[fx])), [label(x) for x in swept[fx]])
    left.set_xlabel(fx)
    left.set_ylabel('best validation accuracy')
    left.grid(alpha=0.3)
  left.set_title('Validation accuracy vs swept values' + suffix)
  ranked = sorted(records, key=lambda r: -r['best_val_accuracy'])
  for rank, r in enumerate(ranked):
    curve = [np.nan if v is None else v for v in r['val_accuracy']]
    name = ', '.join(f'{k}={label(v)}' for k, v in sorted(r['values'].items()))
    right.plot(range(1, len(curve) + 1), curve, marker='.',
               lw=2.5 if rank == 0 else 1, alpha=1 if rank < 5 else 0.35,
               label=name if rank < 5 else None)
  right.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  right.set_xlabel('epoch')
  right.set_ylabel('validation accuracy')
  right.set_title('Per member, best 5 labelled (thick: selected)')
  right.legend(fontsize=7, loc='lower right')
  right.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _member_records(grid, group_results) -> list:
  """One JSON-able dict per member, from the per-chunk PopulationResults."""
  records = [None] * len(grid)
  for indices, result in group_results:
    for row, index in enumerate(indices):
      if records[index] is not None:
        continue  # A padding copy at the end of a chunk.
      stopped = result.epochs_trained[row] < len(result.val_accuracy[row])
      status = ('diverged' if result.diverged[row] else
                'stopped early' if stopped else 'ok')
      records[index] = {
          'member': index, 'values': grid[index],
          'best_val_accuracy': float(result.best_val_accuracy[row]),
          'best_epoch': int(result.best_epoch[row]),
          'epochs_trained': int(result.epochs_trained[row]),
          'status': status,
          'val_accuracy': [None if v != v else float(v)
                           for v in result.val_accuracy[row]],
          'train_loss': [None if v != v else float(v)
                         for v in result.train_loss[row]]}
  return records


def _single_run_state(member_cfg, ds, params, step, opt_state=None):
  """A TrainState with the single-run optimizer, holding ``params``.

  The population's optimizer state is laid out by ``inject_hyperparams``;
  it is carried over when, unwrapped, it has the single-run layout (adamw,
  constant schedule), else the single-run optimizer starts fresh (only a
  resumed training run would notice).
  """
  import jax
  import optax
  from jaxcls import models, optim, train
  steps_per_epoch = len(ds.train) // member_cfg.batch_size
  model = models.create_model(member_cfg, ds.spec.num_classes)
  tx = optim.create_optimizer(member_cfg, steps_per_epoch)
  init_rng, _ = jax.random.split(jax.random.key(member_cfg.seed))
  state = train.create_train_state(init_rng, model, tx, ds.spec.image_shape)
  state = state.replace(params=params, step=jax.numpy.asarray(step))
  if opt_state is not None:
    inner = opt_state.inner_state if isinstance(
        opt_state, optax.InjectStatefulHyperparamsState) else None
    if (jax.tree_util.tree_structure(inner) ==
        jax.tree_util.tree_structure(state.opt_state)):
      state = state.replace(opt_state=inner)
  return state


def save_best_member(workdir, member_cfg, ds, result, row) -> dict:
  """Writes the member as a normal run, scores it on test; its results."""
  import jax
  from jaxcls import checkpoint, parallel, sweep, train
  fingerprint = config_lib.fingerprint(member_cfg)
  best_epoch = int(result.best_epoch[row])
  meta = {'best_val_accuracy': float(result.best_val_accuracy[row]),
          'best_epoch': best_epoch, 'fingerprint': fingerprint,
          'config': member_cfg.to_json()}
  best_state = _single_run_state(
      member_cfg, ds, sweep.take_member(result.best_params, row),
      int(result.best_step[row]))
  final = sweep.take_member(result.final_state, row)
  latest_state = _single_run_state(member_cfg, ds, final.params,
                                   int(final.step), final.opt_state)
  for name, state, epoch in (
      ('best', best_state, best_epoch),
      ('latest', latest_state, int(result.epochs_trained[row]))):
    manager = checkpoint.make_manager(workdir, name)
    checkpoint.save(manager, state, {'epoch': epoch, **meta})
    manager.wait_until_finished()
  mesh = parallel.make_mesh()
  test = train.evaluate(jax.jit(train.eval_step), best_state, ds.test,
                        member_cfg.eval_batch_size, mesh)
  results = {'dataset': member_cfg.dataset, 'data_source': ds.source,
             'model': member_cfg.model, 'config_fingerprint': fingerprint,
             'epochs': int(result.epochs_trained[row]),
             'test_accuracy': test['accuracy'], 'test_loss': test['loss'],
             'best_val_accuracy': meta['best_val_accuracy'],
             'best_epoch': best_epoch,
             'params_sha256': train.params_sha256(final.params)}
  train.write_results(workdir, results)
  return results


def run_sweep(config, workdir: str, log=print) -> dict:
  """Trains every member, ranks them on validation, saves the best one."""
  import jax
  from jaxcls import data, sweep
  swept = sweep.swept_values(config)
  if not swept:
    raise ValueError('nothing to sweep: set e.g. '
                     '--config.sweep_learning_rate=1e-3,3e-3')
  grid = sweep.member_grid(swept, config.sweep_samples,
                           config.sweep_sample_seed)
  configs = [sweep.member_config(config, v) for v in grid]
  for c in configs:
    config_lib.validate(c)
  if 'weight_decay' in swept and config.optimizer != 'adamw':
    raise ValueError('weight_decay only acts with --config.optimizer=adamw')
  groups = {}
  for index, c in enumerate(configs):
    groups.setdefault(sweep.group_key(c), []).append(index)
  os.makedirs(workdir, exist_ok=True)
  ds = data.load(config.dataset, config.data_dir, config.validation_percent,
                 config.train_examples)
  log(f'Sweep of {len(grid)} members over {sorted(swept)} in '
      f'{len(groups)} population(s) on {jax.devices()[0].platform}')

  group_results, compile_s, train_s, chunk_sizes = [], 0.0, 0.0, []
  for indices in groups.values():
    group_cfg = configs[indices[0]]
    size = config.population_chunk or sweep.auto_chunk_size(
        group_cfg, ds, len(indices))
    chunk_sizes.append(size)
    steps = sweep.make_population_steps(group_cfg, ds)
    for chunk in sweep.chunks(indices, size):
      traced = [{f: grid[i][f] for f in sweep.TRACED_FIELDS if f in grid[i]}
                for i in chunk]
      log(f'Population of {len(chunk)} (members {sorted(set(chunk))}):')
      result = sweep.train_population(group_cfg, traced, ds,
                                       patience=config.patience, log=log,
                                       steps=steps)
      compile_s += result.compile_seconds
      train_s += result.train_seconds
      group_results.append((chunk, result))

  records = _member_records(grid, group_results)
  best = sweep.best_member([r['best_val_accuracy'] for r in records])
  names = sorted(swept)
  log('\n' + format_table(records, names))
  chunk, result = next((c, r) for c, r in group_results if best in c)
  test = save_best_member(workdir, configs[best], ds, result, chunk.index(best))
  command = ['python -m experiments.fashion_mnist', f'--workdir={workdir}',
             '--eval_only', *eval_overrides(configs[best])]
  summary = {
      'swept': swept, 'members': records, 'best_member': best,
      'best': {'values': grid[best], 'test_accuracy': test['test_accuracy'],
               'best_val_accuracy': records[best]['best_val_accuracy'],
               'eval_command': ' '.join(command)},
      'populations': len(group_results), 'chunk_sizes': chunk_sizes,
      'compile_seconds': compile_s, 'train_seconds': train_s,
      'platform': jax.devices()[0].platform}
  with open(os.path.join(workdir, 'sweep.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  plot_sweep(records, swept, os.path.join(workdir, 'sweep.png'))
  log(f"Best member {best} {grid[best]}: val accuracy "
      f"{records[best]['best_val_accuracy']:.4f}, test accuracy "
      f"{test['test_accuracy']:.4f} (the only member scored on test)")
  log(f'Compile {compile_s:.1f}s, train {train_s:.1f}s. Re-score it: '
      f"{summary['best']['eval_command']}")
  return summary


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}; use --config.x=... '
             'and --workdir=...')
  cli._quiet_logs()  # pylint: disable=protected-access
  try:
    run_sweep(flags.FLAGS.config, flags.FLAGS.workdir)
  except cli.EXPECTED_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  from ml_collections import config_flags
  config_flags.DEFINE_config_dict('config', get_config())
  flags.DEFINE_string('workdir', os.path.join('runs', 'sweep'),
                      'sweep.json, sweep.png, the best member\'s checkpoints '
                      'and results.json go here.')
  app.run(main)
