"""The jobs train.py runs, by `config.task`: each Task gives the job-specific parts (its batches,
state, step, where its encoder lies, its evaluation) of the one loop."""
import jax

from data2vec import finetuning, pretraining, pretraining2
from data2vec.input_pipeline import finetune as finetune_input
from data2vec.input_pipeline import pretrain as pretrain_input

# pretrain: data2vec (configs/{vision,audio,text}.py); pretrain2: data2vec 2.0
# (configs/vision2.py); finetune: a task head (configs/finetune_*.py).
TASKS = {'pretrain': pretraining.Task, 'pretrain2': pretraining2.Task, 'finetune': finetuning.Task}


def make(config):
  """The Task of a run's config."""
  return TASKS[config.task](config)


def make_input(config, local_batch_size):
  """This process's batch iterator of the run (checkpointable: get_state/set_state)."""
  if config.task == 'finetune':
    return iter(finetune_input.make_train_dataset(
        config, batch_size=local_batch_size, process_index=jax.process_index(),
        process_count=jax.process_count()))
  return pretrain_input.make_input(config, local_batch_size)
