r"""Exports the pretrained encoder of a workdir as a transformers Data2Vec folder.

  python scripts/export_hf.py --workdir DIR --out HF_DIR [--step N] [--overwrite]

The folder (config.json + model.safetensors) loads with transformers' AutoModel.from_pretrained.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=g-import-not-at-top
import jax
from flax import nnx

from data2vec import checkpoint, hf, pretraining

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training workdir.', required=True)
_OUT = flags.DEFINE_string('out', None, 'The folder to write.', required=True)
_STEP = flags.DEFINE_integer('step', None, 'The checkpoint step (default: the latest).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace a non-empty --out folder.')


def export(workdir, out, step=None, overwrite=False):
  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise FileExistsError(f'--out {out} is not empty; pass --overwrite to replace it')
  config = pretraining.load_workdir_config(workdir)
  ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f'{ckpt.directory} holds no checkpoint')
  tx, _ = pretraining.make_optimizer(config)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          jax.eval_shape(pretraining.init_state_fn(config, tx)))
  state, _ = ckpt.restore(abstract, step)
  ckpt.close()
  encoder_def, _ = pretraining.graph_defs(config)
  hf.save_pretrained(nnx.merge(encoder_def, state['params']['encoder']), out, overwrite=overwrite)
  print(f'exported step {int(state["step"])} of {workdir} to {out}')


def main(argv):
  del argv
  export(_WORKDIR.value, _OUT.value, _STEP.value, _OVERWRITE.value)


if __name__ == '__main__':
  app.run(main)
