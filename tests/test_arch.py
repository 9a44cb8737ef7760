"""The layout adapter: every method works on each supported layout; unsupported ones are refused."""
import numpy as np
import pytest
import torch

from autocompress import arch
from autocompress.checkpoint import load_model, save_model
from autocompress.export import export_onnx
from autocompress.recipe import Recipe, Step

from conftest import LAYOUTS, tiny_config

STRUCTURE = Recipe((Step("drop_layers", {"keep": 3, "strategy": "alternate"}), Step("prune_heads", {"ratio": 0.5}),
                    Step("prune_ffn", {"ratio": 0.5, "multiple": 8}), Step("distill", {"steps": 3, "batch_size": 8})))


def _logits(model, batch):
    with torch.no_grad():
        return model(**arch.inputs(model, batch)).logits


@pytest.mark.parametrize("model_type", LAYOUTS)
def test_each_layout_is_compressed_saved_and_exported(model_type, tiny_model, tiny_ctx, tmp_path):
    import onnxruntime as ort

    model = tiny_model(model_type)
    assert arch.num_layers(model.config) == 4 and len(arch.layers(model)) == 4
    before = sum(p.numel() for p in model.parameters())
    out = STRUCTURE.apply_torch(model, tiny_ctx)
    layers = arch.layers(out)
    assert len(layers) == 3 and out.config.num_hidden_layers == 3
    assert out.config.autocompress_layers == [0, 2, 3]              # teacher layer of each kept layer
    for layer in layers:
        assert arch.num_heads(out, layer) == 2
        assert arch.attention_linears(out, layer)["query"].out_features == 2 * arch.head_size(out, layer)
        assert arch.ffn_linears(out, layer)["ffn_in"].out_features == 32
    assert sum(p.numel() for p in out.parameters()) < before
    batch = tiny_ctx.transfer.collate(list(range(8)))
    ref = _logits(out, batch)
    again = load_model(save_model(out, None, tmp_path / "ckpt"))
    assert type(again) is type(out)
    assert torch.allclose(_logits(again, batch), ref, atol=1e-5)
    onnx = export_onnx(out, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == list(arch.input_names(out))
    assert ("token_type_ids" in names) == (model_type != "distilbert")
    got = session.run(["logits"], {k: batch[k].numpy() for k in names})[0]
    assert np.allclose(got, ref.numpy(), atol=1e-4)


def test_unsupported_architecture_is_refused():
    import transformers

    config = transformers.AlbertConfig()
    with pytest.raises(arch.ArchitectureError, match="'albert' is not supported: the methods know bert, camembert"):
        arch.check_config(config)
    assert arch.check_config(tiny_config("distilbert")).name == "distilbert"


def test_cli_refuses_an_unsupported_model_before_fine_tuning(tmp_path, capsys, monkeypatch, glue_dir):
    import transformers

    from autocompress.cli import main

    folder = tmp_path / "albert"
    transformers.AlbertConfig(vocab_size=100, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                              embedding_size=8).save_pretrained(folder)
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    code = main(["search", "--model", str(folder), "--data-dir", str(glue_dir), "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "architecture 'albert' is not supported" in err and "distilbert" in err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()
