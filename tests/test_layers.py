"""The shared layers' dropout: its hashed Bernoulli mask."""
import jax
import numpy as np
import pytest

from data2vec.models import layers


@pytest.mark.parametrize('rate', [0.05, 0.1, 0.5])
def test_keep_mask_is_bernoulli(rate):
  shape = (16, 8, 64, 128)  # 128 rows of 8192 draws
  keep = np.asarray(jax.jit(layers.keep_mask, static_argnums=(1, 2))(jax.random.key(0), shape,
                                                                    rate))
  assert keep.shape == shape and keep.dtype == bool
  binomial_std = np.sqrt(rate * (1 - rate) / keep.size)
  assert abs(keep.mean() - (1 - rate)) < 4 * binomial_std
  # Rows, columns and positions vary as independent draws would (no shared counters).
  for axis in (2, 3):
    means = keep.mean(axis=axis).ravel()
    expected = np.sqrt(rate * (1 - rate) / shape[axis])
    assert 0.85 < means.std() / expected < 1.15, axis
  rows = keep.reshape(-1, 64 * 128).astype(np.float64)
  corr = np.corrcoef(rows) - np.eye(len(rows))
  assert np.abs(corr).max() < 6 / np.sqrt(rows.shape[1])


def test_keep_mask_depends_on_the_key_only():
  shape = (4, 32, 32)
  a = layers.keep_mask(jax.random.key(0), shape, 0.1)
  np.testing.assert_array_equal(a, layers.keep_mask(jax.random.key(0), shape, 0.1))
  b = np.asarray(layers.keep_mask(jax.random.key(1), shape, 0.1))
  assert abs(np.corrcoef(np.ravel(a), b.ravel())[0, 1]) < 0.05
  assert np.asarray(layers.keep_mask(jax.random.key(0), (3,), 0.0)).all()


def test_dropout_scales_the_kept():
  x = np.ones((64, 64), np.float32)
  y = np.asarray(layers.dropout(x, 0.25, jax.random.key(3)))
  assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
  assert abs(y.mean() - 1) < 0.05
  assert layers.dropout(x, 0.25, None) is x
