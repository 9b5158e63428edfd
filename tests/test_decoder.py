"""data2vec 2.0's conv decoder against a torch reference written from fairseq's Decoder1d /
Decoder2d (docs/algorithm.md §8.4), and the decoder input (noise at the masked positions)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from data2vec.models.decoder import ConvDecoder, decoder_input
from data2vec.models.text import TextConfig

D = 24


def torch_decoder(params, *, spatial, kernel, groups, residual, grid, two_layer_projection):
  """A forward on torch modules holding `params` (our pure dict): fairseq's block order."""
  conv_cls = torch.nn.Conv2d if spatial == 2 else torch.nn.Conv1d
  convs = []
  for i in sorted(params['convs']):
    w = np.asarray(params['convs'][i]['kernel'])  # [k.., in / groups, out]
    conv = conv_cls(w.shape[-2] * groups, w.shape[-1], kernel, padding=kernel // 2,
                    groups=groups)
    perm = (3, 2, 0, 1) if spatial == 2 else (2, 1, 0)
    conv.weight.data = torch.tensor(w.transpose(perm))
    conv.bias.data = torch.tensor(np.asarray(params['convs'][i]['bias']))
    convs.append(conv)
  linears = []
  for i in sorted(params['projection']):
    p = params['projection'][i]
    lin = torch.nn.Linear(*np.asarray(p['kernel']).shape)
    lin.weight.data = torch.tensor(np.asarray(p['kernel']).T)
    lin.bias.data = torch.tensor(np.asarray(p['bias']))
    linears.append(lin)

  def forward(x):
    b, t, c = x.shape
    x = x.transpose(1, 2)
    x = x.reshape(b, c, *grid) if spatial == 2 else x
    residual_in = x
    for conv in convs:
      y = conv(x)
      if kernel % 2 == 0:  # SamePad
        y = y[..., :-1, :-1] if spatial == 2 else y[..., :-1]
      y = torch.nn.functional.layer_norm(y.movedim(1, -1), (y.shape[1],), eps=1e-5).movedim(-1, 1)
      y = torch.nn.functional.gelu(y)
      x = y + residual_in if residual and y.shape == residual_in.shape else y
      residual_in = x
    x = x.reshape(b, x.shape[1], t).transpose(1, 2)
    x = linears[0](x)
    if two_layer_projection:
      x = linears[1](torch.nn.functional.gelu(x))
    return x

  return forward


@pytest.mark.parametrize('case', [
    dict(grid=(4, 5), dim=16, num_layers=3, kernel_size=3, groups=4, residual=True),  # images
    dict(grid=None, dim=12, num_layers=4, kernel_size=7, groups=4, residual=True),  # audio
    dict(grid=None, dim=24, num_layers=2, kernel_size=4, groups=1, residual=False,  # text
         projection_hidden=48),
])
def test_decoder_matches_the_torch_reference(case):
  config = TextConfig(hidden_size=D, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32)
  decoder = ConvDecoder(config, rngs=nnx.Rngs(0), **case)
  params = nnx.to_pure_dict(nnx.state(decoder))
  x = np.random.default_rng(0).normal(size=(3, 20, D)).astype(np.float32)
  ours = np.asarray(decoder(jnp.asarray(x)))
  assert ours.shape == (3, 20, D)
  reference = torch_decoder(params, spatial=2 if case['grid'] else 1,
                            kernel=case['kernel_size'], groups=case['groups'],
                            residual=case['residual'], grid=case['grid'],
                            two_layer_projection=bool(case.get('projection_hidden')))
  with torch.no_grad():
    theirs = reference(torch.tensor(x)).numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_decoder_input_puts_outputs_in_place_and_noise_elsewhere():
  visible = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4) + 100
  ids = jnp.array([[4, 0, 2], [1, 5, 3]])
  x = np.asarray(decoder_input(visible, ids, 6, 0.01, jax.random.key(0)))
  for n in range(2):
    np.testing.assert_array_equal(x[n, np.asarray(ids[n])], visible[n])
    noise = np.delete(x[n], np.asarray(ids[n]), axis=0)
    assert noise.shape == (3, 4) and np.all(np.abs(noise) < 0.06) and np.std(noise) > 0.001
