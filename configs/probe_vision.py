r"""Linear probes of a vision encoder on Fashion-MNIST (docs/data.md).

  python eval.py --config configs/probe_vision.py --workdir DIR [--config.random_init=True]
  python eval.py --config configs/probe_vision.py:10 --hf HF_DIR --out DIR

The arg lists the label budgets per class (default `10,100,all`). Inputs are normalised as in
pretraining (configs/vision.py); the encoder fixes their size.
"""
import ml_collections

from configs import probe_common, vision


def get_config(arg=None):
  config = probe_common.probe_config('vision', arg)
  pretrain_input = vision.get_config('tiny').input
  config.input = ml_collections.ConfigDict(dict(
      dataset=pretrain_input.dataset, mean=pretrain_input.mean, std=pretrain_input.std,
      center_crop=pretrain_input.center_crop))
  return config
