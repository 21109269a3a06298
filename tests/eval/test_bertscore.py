"""BERTScore in JAX equals the reference formula on transformers' RobertaModel (torch) + numpy, and the bert-score
package, on a tiny random RoBERTa and a byte-level BPE tokenizer built here and saved locally (nothing downloaded)."""
import json
import pathlib

import numpy as np
import pytest

from jaxpetct.eval.bertscore import SKIP_MESSAGE, BertScoreError, BertScorer, compute_bertscore, default_layer
from jaxpetct.text.encoder_tokenizer import EncoderTokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CORPUS = [
    "Hạch rốn phổi phải kích thước 12 x 10 mm, tăng chuyển hoá FDG (SUVmax: 5,6).",
    "Nốt mờ thuỳ trên phổi trái, không tăng chuyển hoá FDG.",
    "Gan không to, nhu mô đều, không thấy tổn thương khu trú.",
    "Tổn thương tiêu xương đốt sống D8 tăng chuyển hoá FDG, khả năng di căn.",
    "Khối mờ thuỳ dưới phổi phải kích thước 35 x 30 mm, tăng chuyển hoá FDG mạnh.",
]
CANDIDATES = ["Nốt mờ thuỳ trên phổi phải, tăng chuyển hoá FDG (SUVmax: 4,1).",
              "Gan không to.",
              "Hạch trung thất kích thước 8 mm, không tăng chuyển hoá FDG.",
              "",
              "Tổn thương đặc xương cánh chậu phải, tăng chuyển hoá FDG."]
REFERENCES = ["Nốt mờ thuỳ trên phổi trái, không tăng chuyển hoá FDG.",
              "Gan không to, nhu mô đều, không thấy tổn thương khu trú.",
              "Hạch rốn phổi phải kích thước 12 x 10 mm, tăng chuyển hoá FDG (SUVmax: 5,6).",
              "Lách không to.",
              "Tổn thương tiêu xương đốt sống D8 tăng chuyển hoá FDG, khả năng di căn."]
LAYERS, LAYER = 3, 2


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> pathlib.Path:
    """A tiny random RobertaModel + byte-level BPE trained on a few report sentences, saved like a hub folder."""
    d = tmp_path_factory.mktemp("tiny_roberta")
    bpe = tokenizers.ByteLevelBPETokenizer(add_prefix_space=True)
    bpe.train_from_iterator(CORPUS * 4, vocab_size=420, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(d))
    bpe.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "RobertaTokenizer", "model_max_length": 62, "add_prefix_space": True,
        "bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>",
        "unk_token": "<unk>", "mask_token": "<mask>"}))
    torch.manual_seed(0)
    cfg = transformers.RobertaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, num_hidden_layers=LAYERS,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                     type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = transformers.RobertaModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm.weight" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(d, safe_serialization=True)
    return d


def reference_bertscore(directory, cands, refs, layer, idf):
    """The BERTScore formula written out on transformers' tokenizer and RobertaModel hidden states (numpy)."""
    tok = transformers.AutoTokenizer.from_pretrained(str(directory))
    model = transformers.RobertaModel.from_pretrained(str(directory)).eval()

    def embed(text):
        ids = tok.encode(text.strip(), add_special_tokens=True, truncation=True, max_length=62)
        with torch.no_grad():
            hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[layer][0].numpy()
        return ids, hs / np.linalg.norm(hs, axis=-1, keepdims=True)

    ref_ids = [embed(r)[0] for r in refs]
    n = len(refs)
    df = {}
    for ids in ref_ids:
        for t in set(ids):
            df[t] = df.get(t, 0) + 1
    special = {tok.cls_token_id, tok.sep_token_id}
    w = (lambda t: np.log((n + 1) / (df.get(t, 0) + 1))) if idf else (lambda t: 0.0 if t in special else 1.0)
    out = []
    for c, r in zip(cands, refs):
        (ci, ce), (ri, re_) = embed(c), embed(r)
        if len(ci) == 2 or len(ri) == 2:
            out.append((0.0, 0.0, 0.0))
            continue
        sim = ce @ re_.T
        cw, rw = np.array([w(t) for t in ci]), np.array([w(t) for t in ri])
        p = (sim.max(axis=1) * cw).sum() / cw.sum()
        rc = (sim.max(axis=0) * rw).sum() / rw.sum()
        out.append((p, rc, 2 * p * rc / (p + rc)))
    return np.array(out).T


@pytest.mark.parametrize("idf", [False, True])
def test_equals_reference_formula_on_transformers(encoder_dir, idf):
    ours = BertScorer(encoder_dir, layer=LAYER, idf=idf, batch_size=4).score(CANDIDATES, REFERENCES)
    ref = reference_bertscore(encoder_dir, CANDIDATES, REFERENCES, LAYER, idf)
    got = np.stack([ours.precision, ours.recall, ours.f1])
    err = np.abs(got - ref).max()
    print(f"BERTScore vs RobertaModel+numpy (idf={idf}): max |delta| = {err:.2e}; F1 = {np.round(ours.f1, 4)}")
    assert err <= 1e-5, err
    assert ours.f1[3] == 0.0 and np.ptp(ours.f1[[0, 1, 2, 4]]) > 0.01  # empty candidate; scores really differ


def test_equals_bert_score_package_with_baseline(encoder_dir, tmp_path):
    bert_score = pytest.importorskip("bert_score", reason="bert-score is not installed (pip install bert-score)")
    baseline = tmp_path / "baseline.csv"
    rows = ["LAYER,P,R,F"] + [f"{k},{0.30 + 0.05 * k:.2f},{0.31 + 0.05 * k:.2f},{0.305 + 0.05 * k:.3f}"
                              for k in range(LAYERS + 1)]
    baseline.write_text("\n".join(rows) + "\n")
    # bert-score 0.3.13 cannot encode an empty text under transformers 5 (build_inputs_with_special_tokens is gone)
    cands, refs = zip(*[(c, r) for c, r in zip(CANDIDATES, REFERENCES) if c])
    for idf, rescale in ((False, False), (True, True)):
        kw = dict(rescale_with_baseline=True, baseline_path=str(baseline), lang="vi") if rescale else {}
        p, r, f = bert_score.score(list(cands), list(refs), model_type=str(encoder_dir), num_layers=LAYER, idf=idf,
                                   batch_size=1, nthreads=0, device="cpu", **kw)
        ours = BertScorer(encoder_dir, layer=LAYER, idf=idf, baseline=baseline if rescale else None,
                          batch_size=3).score(cands, refs)
        err = np.abs(np.stack([ours.precision, ours.recall, ours.f1]) - np.stack([p, r, f]).astype(np.float64)).max()
        print(f"BERTScore vs bert-score 0.3.x (idf={idf}, baseline={rescale}): max |delta| = {err:.2e}")
        assert err <= 1e-5, err


def test_layer_defaults_skip_message_and_bad_input(encoder_dir, tmp_path):
    assert default_layer(12) == 9 and default_layer(24) == 17 and default_layer(3) == 3
    assert default_layer(12, "roberta-base") == 10
    assert BertScorer(encoder_dir).layer == LAYERS  # a 3-layer model: last layer
    with pytest.raises(BertScoreError) as skip:
        BertScorer(None)
    assert str(skip.value) == SKIP_MESSAGE
    with pytest.raises(BertScoreError, match="out of range"):
        BertScorer(encoder_dir, layer=LAYERS + 1)
    with pytest.raises(BertScoreError, match="does not exist"):
        BertScorer(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BertScoreError, match="empty"):
        BertScorer(tmp_path / "empty")
    bad = tmp_path / "bad.csv"
    bad.write_text("LAYER,P,R,F\n0,0.1,0.1,0.1\n")
    with pytest.raises(BertScoreError, match="no row for layer 2"):
        BertScorer(encoder_dir, layer=LAYER, baseline=bad)


def test_a_tokenizer_that_gives_no_tokens_is_an_error_naming_the_folder(encoder_dir, monkeypatch):
    """Empty texts score 0 (bert-score's rule); a non-empty text the tokenizer turns into nothing is an error."""
    scorer = BertScorer(encoder_dir)
    assert scorer.score([""], ["Hạch cổ."]).f1[0] == 0.0
    empty = [scorer.tokenizer.cls_id, scorer.tokenizer.sep_id]
    monkeypatch.setattr(scorer.tokenizer, "encode", lambda text: list(empty))
    with pytest.raises(BertScoreError, match=rf"encoder folder '{encoder_dir.name}': its tokenizer gives no tokens for "
                                             r"candidate #0"):
        scorer.score(["Hạch cổ trái."], ["Hạch cổ trái."])


def test_metrics_cli_adds_bertscore_only_with_a_model(encoder_dir, run_cli, jsonl_file):
    path = jsonl_file([{"generated": c, "reference": r} for c, r in zip(CANDIDATES, REFERENCES)])
    without = run_cli("jaxpetct.eval.metrics", "--predictions", path)
    assert without.returncode == 0, without.stderr
    assert "bertscore" not in json.loads(without.stdout) and "bertscore skipped" in without.stderr
    with_model = run_cli("jaxpetct.eval.metrics", "--predictions", path, "--bertscore-model", encoder_dir,
                         "--bertscore-layer", str(LAYER), "--bertscore-idf")
    assert with_model.returncode == 0, with_model.stderr
    got = json.loads(with_model.stdout)
    expect = compute_bertscore(CANDIDATES, REFERENCES, encoder_dir, layer=LAYER, idf=True)
    assert abs(got["bertscore"] - expect["bertscore"]) < 1e-6 and got["bertscore_settings"]["layer"] == LAYER
    assert 0 < got["bertscore"] < 100 and got["bleu4"] == json.loads(without.stdout)["bleu4"]
    missing = run_cli("jaxpetct.eval.metrics", "--predictions", path, "--bertscore-model", encoder_dir / "nope")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_phobert_fastbpe_equals_transformers_phobert_tokenizer(tmp_path):
    """PhoBERT ships vocab.txt + bpe.codes (no tokenizer.json): our fastBPE gives PhobertTokenizer's ids."""
    words = "hình_ảnh tăng chuyển_hoá FDG ở thuỳ trên phổi phải kích_thước 12 mm".split()
    merges = [("h", "ì"), ("hì", "n"), ("hìn", "h"), ("t", "ă"), ("tă", "n"), ("tăn", "g</w>"), ("p", "h"),
              ("ph", "ổ"), ("ph", "ả"), ("i", "</w>"), ("F", "D"), ("FD", "G</w>"), ("m", "m</w>"), ("1", "2</w>"),
              ("_", "ả"), ("c", "h"), ("ch", "u")]
    pieces = set()
    for w in words:
        pieces.update([w, w + "@@"] + [c + "@@" for c in w] + list(w))
    pieces.update(["hình@@", "tăng", "phổi", "phải", "FDG", "mm", "12", "ch@@", "chu@@", "hìn@@", "_ả@@", "i"])
    (tmp_path / "vocab.txt").write_text("".join(f"{p} {i + 1}\n" for i, p in enumerate(sorted(pieces))))
    (tmp_path / "bpe.codes").write_text("".join(f"{a} {b} {100 - i}\n" for i, (a, b) in enumerate(merges)))
    ref = transformers.PhobertTokenizer(str(tmp_path / "vocab.txt"), str(tmp_path / "bpe.codes"))
    ours = EncoderTokenizer(tmp_path)
    for text in ("hình_ảnh tăng chuyển_hoá FDG", "thuỳ trên phổi phải kích_thước 12 mm", "xyz", ""):
        assert ours.encode(text) == ref.encode(text), text
    assert len(set(ours.encode("hình_ảnh tăng chuyển_hoá FDG"))) > 5
