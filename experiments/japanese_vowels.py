"""A BiLSTM tells 9 speakers apart from their uttered vowels (UCR/UEA).

Run:  python -m experiments.japanese_vowels [--workdir=W]
Any other UCR/UEA problem in the wheel, by name:
      python -m experiments.japanese_vowels --config.dataset=ucr/BasicMotions

Data: JapaneseVowels (Kudo et al. 1999) from the UCR/UEA archive, as
sktime's wheel ships it: `pip download --no-deps sktime==1.2.0`, found in
`--config.manual_dir`, `<data_dir>/downloads/manual/ucr` or
`$JAXCLS_SKTIME_WHEEL`, and read from the wheel itself (neither sktime nor
pandas is needed); prepared once as the TFDS dataset `ucr_series`. The
official split: 270 train / 370 test utterances of 12 LPC cepstrum
channels, 7 to 29 steps long. Validation is 10% of each speaker's training
utterances; each channel is standardised with the training steps' mean and
deviation.

Model: a 64-wide input projection, one bidirectional LSTM of 64 per
direction, the mean over each utterance's own steps, dropout 0.2, AdamW at
2e-3 with a warmup and cosine decay over 30 epochs, batch 16. The best epoch
by validation loss (27 utterances: their accuracy reaches 100% within a few
epochs) is scored on the 370 test utterances.
"""

from experiments import results
from jaxcls import config
from jaxcls.commands import cli


def get_config():
  c = config.get_config()
  c.dataset = 'ucr/JapaneseVowels'
  c.model = 'sequence'
  c.cell = 'lstm'
  c.bidirectional = True
  c.hidden_size = 64
  c.embed_size = 64
  c.readout = 'mean'
  c.dropout_rate = 0.2
  c.optimizer = 'adamw'
  c.learning_rate = 2e-3
  c.lr_schedule = 'warmup_cosine'
  c.warmup_epochs = 2.0
  c.batch_size = 16
  c.eval_batch_size = 128
  c.num_epochs = 30
  c.best_by = 'loss'  # 27 validation utterances: accuracy saturates early
  c.log_every_steps = 0
  return c


if __name__ == '__main__':
  cli.run(
    get_config,
    'japanese_vowels',
    measured=results.measured('japanese_vowels'),
  )
