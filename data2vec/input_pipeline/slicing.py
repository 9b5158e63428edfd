"""How records are divided among processes, epochs and batches: one definition for every pipeline.

Training: record ids -> shuffle(seed) -> repeat -> process p takes positions p, p + count, ... of
the global stream. A pipeline's element at local position i of process p is at global position
p + i * count, in epoch (global position) // num_records: every random draw depends on (seed,
record, epoch) only, so a batch is a pure function of its position and the iterator state is one
index (a resume needs the same process count).
Evaluation: every record once, in order; process p takes records p, p + count, ..., and every
process yields the same number of full batches (so collectives line up), the tail padded.
"""
import grain


def check_process(process_index, process_count):
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in [0, process_count={process_count})')


def global_position(local_index, process_index, process_count):
  return process_index + local_index * process_count


def epoch(local_index, process_index, process_count, num_records):
  """The epoch of a training element (shuffle and repeat count epochs the same way)."""
  return global_position(local_index, process_index, process_count) // num_records


def train_records(num_records, *, seed, num_epochs, process_index, process_count):
  """This process's shuffled, repeated record ids: a MapDataset to `map_with_index` over."""
  check_process(process_index, process_count)
  ds = grain.MapDataset.range(num_records).shuffle(seed=seed).repeat(num_epochs)
  return ds[process_index::process_count]


def padded_length(num_records, batch_size, process_count):
  """Elements per process in evaluation: its share of the records, padded to whole batches."""
  per_process = -(-num_records // process_count)
  return -(-per_process // batch_size) * batch_size


def eval_batches(element, num_records, batch_size, *, process_index, process_count,
                 num_threads=4, prefetch_buffer_size=8):
  """Padded evaluation batches: element(record or None) for the padding -> example."""
  check_process(process_index, process_count)

  def at(local_index):
    record = global_position(local_index, process_index, process_count)
    return element(record if record < num_records else None)

  ds = grain.MapDataset.range(padded_length(num_records, batch_size, process_count))
  return iterate(ds.map(at).batch(batch_size), num_threads, prefetch_buffer_size)


def iterate(ds, num_threads=4, prefetch_buffer_size=8):
  """A MapDataset of batches as grain's checkpointable iter dataset."""
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                              prefetch_buffer_size=prefetch_buffer_size))
