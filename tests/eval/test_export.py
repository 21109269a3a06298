"""Export: the LLM directory loads in transformers and gives our logits (LoRA merged), the vision weights come back
bit-identical, the tokenizer files load in transformers and tokenize like our tokenizer, writes are atomic."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpetct.eval import export as export_mod
from jaxpetct.eval.export import ExportError, export_vlm, load_vision, load_vlm
from jaxpetct.eval.spm_json import spm_tokenizer
from jaxpetct.models.lora import LoRAConfig, adapted_denses, apply_lora
from jaxpetct.text.tokenizer import load_tokenizer, mistral_v1_model_file
from tests.eval.synthetic_eval import tiny_vlm

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
TEXTS = ["Hạch trung thất kích thước 12 x 10 mm, tăng chuyển hoá FDG (SUVmax: 5,2).",
         "[INST] <<SYS>> Hãy mô tả hình ảnh PET/CT vùng ngực. [/INST] Gan không to.\nLách 🙂 bình thường"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    vlm = tiny_vlm(seed=5)
    apply_lora(vlm.decoder, LoRAConfig(rank=4, alpha=8.0, dropout=0.0), nnx.Rngs(7))
    key = jax.random.key(11)
    for _, dense in adapted_denses(vlm.decoder):  # B = 0 at init would make the merge a no-op: randomise it
        key, sub = jax.random.split(key)
        dense.lora.lora_b[...] = 0.2 * jax.random.normal(sub, dense.lora.lora_b[...].shape)
    out = tmp_path_factory.mktemp("export") / "vlm_export"
    export_vlm(vlm, out)
    return vlm, out


def _ids(seed=0, batch=2, length=12):
    return np.random.default_rng(seed).integers(3, 32000, (batch, length)).astype(np.int32)


def test_llm_loads_in_transformers_with_our_logits(exported):
    vlm, out = exported
    ids = _ids()
    ours = np.asarray(vlm.decoder(jnp.asarray(ids))[0])
    hf = transformers.AutoModelForCausalLM.from_pretrained(out / "llm").eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(ids, dtype=torch.long)).logits.float().numpy()
    err = np.abs(ours - theirs).max()
    print(f"exported LLM vs ours (LoRA merged on export): max |delta logits| = {err:.2e}")
    assert err <= 1e-4, err
    graphdef, state = nnx.split(vlm.decoder)
    base = nnx.merge(graphdef, jax.tree.map(lambda x: x, state))
    for _, dense in adapted_denses(base):
        dense.lora.lora_b[...] = jnp.zeros_like(dense.lora.lora_b[...])
    assert np.abs(np.asarray(base(jnp.asarray(ids))[0]) - ours).max() > 1e-2  # the adapters really mattered
    assert type(hf).__name__ == "MistralForCausalLM"


def test_vision_round_trips_exactly_and_whole_vlm_reloads(exported):
    vlm, out = exported
    encoder, projector, meta = load_vision(out)
    for mine, back in ((vlm.encoder, encoder), (vlm.projector, projector)):
        a, b = nnx.to_flat_state(nnx.state(mine, nnx.Param)), nnx.to_flat_state(nnx.state(back, nnx.Param))
        assert [p for p, _ in a] == [p for p, _ in b] and len(a) >= 2
        for (_, x), (_, y) in zip(a, b):
            assert x.get_value().dtype == y.get_value().dtype
            np.testing.assert_array_equal(np.asarray(x.get_value()), np.asarray(y.get_value()))
    assert encoder.cfg == vlm.encoder.cfg and projector.cfg == vlm.projector.cfg
    assert meta["vlm"]["num_visual_tokens"] == 4 and meta["chat_template"] == "mistral"

    reloaded = load_vlm(out)
    assert reloaded.prefix_lm == vlm.prefix_lm and reloaded.num_visual_tokens == vlm.num_visual_tokens
    images = jnp.asarray(np.random.default_rng(1).random((1, *vlm.encoder.cfg.input_shape), np.float32))

    @functools.partial(jax.jit, static_argnums=0)
    def tokens(graphdef, state, images):  # one compile serves both (same graph), eager CT-ViT would take ~30 s
        return nnx.merge(graphdef, state)(images)

    for mine, back in ((vlm.encoder, reloaded.encoder), (vlm.projector, reloaded.projector)):
        assert nnx.graphdef(mine) == nnx.graphdef(back)
    grid = tokens(*nnx.split(vlm.encoder), images)
    np.testing.assert_array_equal(np.asarray(grid), np.asarray(tokens(*nnx.split(reloaded.encoder), images)))
    np.testing.assert_array_equal(np.asarray(vlm.projector(grid)), np.asarray(reloaded.projector(grid)))
    ids = jnp.asarray(_ids(2, 1, 10))
    assert np.abs(np.asarray(vlm.decoder(ids)[0]) - np.asarray(reloaded.decoder(ids)[0])).max() <= 1e-4
    readme = (out / "README.md").read_text()
    assert "AutoModelForCausalLM.from_pretrained" in readme and "load_vision" in readme


def test_tokenizer_files_load_in_transformers_and_match_ours(exported):
    _, out = exported
    ours = load_tokenizer()
    hf = transformers.AutoTokenizer.from_pretrained(out / "llm")
    folder = load_tokenizer(out / "llm")  # our HF-folder path reads the exported tokenizer.json
    for text in TEXTS:
        assert hf.encode(text) == [ours.bos_id] + ours.encode(text), text
        assert folder.encode(text) == ours.encode(text)
        assert hf.decode(ours.encode(text)) == ours.decode(ours.encode(text))
    assert folder.eos_id == ours.eos_id and folder.bos_id == ours.bos_id
    assert (out / "llm" / "tokenizer.model").read_bytes() == mistral_v1_model_file().read_bytes()


def test_spm_json_equals_sentencepiece_on_real_reports(realdata):
    ours, tok = load_tokenizer(), spm_tokenizer(mistral_v1_model_file())
    texts = [json.loads(line)["report"] for line in (realdata / "reports.jsonl").read_text().splitlines() if line]
    assert len(texts) >= 10
    for text in texts:
        assert tok.encode(text, add_special_tokens=False).ids == ours.encode(text)


def test_bad_inputs_and_atomic_writes(exported, tmp_path, monkeypatch):
    vlm, out = exported
    with pytest.raises(ExportError, match="missing"):
        load_vision(tmp_path)
    with pytest.raises(ExportError, match="does not exist"):
        export_vlm(vlm, tmp_path / "x", tokenizer=tmp_path / "no_tokenizer")
    meta = json.loads((out / "vision" / "vision_config.json").read_text())
    broken = tmp_path / "broken"
    (broken / "vision").mkdir(parents=True)
    (broken / "vision" / "vision_config.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ExportError, match="v99"):
        load_vision(broken)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_mod, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        export_vlm(vlm, tmp_path / "half")
    assert not (tmp_path / "half").exists() and not list(tmp_path.glob(".half*"))
