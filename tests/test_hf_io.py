"""load_pretrained reads older transformers folders (pytorch_model.bin) as well as safetensors."""
import json

import numpy as np
import torch
import transformers

from data2vec import hf


def test_pytorch_model_bin_loads_like_safetensors(tmp_path):
  torch.manual_seed(0)
  config = transformers.Data2VecTextConfig(
      vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=32, max_position_embeddings=20)
  theirs = transformers.Data2VecTextModel(config).eval()
  with torch.no_grad():
    for p in theirs.parameters():
      p.normal_(0, 0.1)
  theirs.save_pretrained(tmp_path / 'st')
  (tmp_path / 'bin').mkdir()
  torch.save(theirs.state_dict(), tmp_path / 'bin' / 'pytorch_model.bin')
  with open(tmp_path / 'bin' / 'config.json', 'w') as f:
    json.dump(config.to_dict(), f)

  ids = np.array([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]])
  mask = (ids != 1).astype(np.int32)
  from_bin = hf.load_pretrained(str(tmp_path / 'bin'))(ids, attention_mask=mask)
  from_st = hf.load_pretrained(str(tmp_path / 'st'))(ids, attention_mask=mask)
  np.testing.assert_array_equal(from_bin['last_hidden_state'], from_st['last_hidden_state'])
  with torch.no_grad():
    expected = theirs(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
  np.testing.assert_allclose(from_bin['last_hidden_state'], expected.last_hidden_state.numpy(),
                             atol=1e-5)
