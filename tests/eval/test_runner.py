"""The evaluation runner on a tiny random VLM and synthetic-cohort examples: file schema, metrics recomputed from
predictions.jsonl by the metrics modules, skipped examples, batching/mesh invariance, seeds, VQA history modes."""
import dataclasses
import json

import numpy as np
import pytest
from flax import nnx

from jaxpetct.eval import runner as runner_mod
from jaxpetct.eval.clinical import clinical_f1
from jaxpetct.eval.lesions import extract_lesions
from jaxpetct.eval.metrics import compute_text_metrics
from jaxpetct.eval.runner import EvalExample, evaluate
from jaxpetct.eval.vlm_generate import DecodingConfig, bucket_length
from jaxpetct.parallel.mesh import make_mesh
from jaxpetct.parallel.rules import LOGICAL_RULES, place_state
from jaxpetct.text.tokenizer import load_tokenizer
from tests.eval.synthetic_eval import cohort_studies, study_examples, tiny_vlm

pytestmark = pytest.mark.integration

DECODING = DecodingConfig(max_new_tokens=8, batch_size=4, length_buckets=(256,))
# The shared rules table has no entries for the vision towers' axis names yet: replicate them for this test.
VISION_RULES = LOGICAL_RULES + tuple((n, None) for n in ("vis_embed", "vis_mlp", "vis_heads", "vis_patch", "vis_proj"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    studies = cohort_studies(tmp_path_factory.mktemp("cohort") / "root", n=3)
    return studies, study_examples(studies), load_tokenizer(), tiny_vlm()


def _read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_files_schema_and_metrics_equal_the_metrics_modules(setup, tmp_path):
    studies, examples, tok, vlm = setup
    bad_shape = dataclasses.replace(examples[0], id="bad-shape", image=np.zeros((2, 8, 32, 32), np.float32))
    bad_id = dataclasses.replace(examples[1], id="PETCT2017/THANG 8/day_1_patient_0")
    metrics = evaluate(vlm, tok, [*examples, bad_shape, bad_id], tmp_path, decoding=DECODING, progress=False)
    preds = _read(tmp_path / "predictions.jsonl")
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(metrics))

    # schema: one line per report example and per VQA turn, pseudonymous ids only
    assert len(preds) == 3 * (1 + 1 + 2) and metrics["counts"]["predictions"] == len(preds)
    ids = {s.study_id for s in studies}
    for p in preds:
        assert set(p) >= {"id", "task", "prompt", "reference", "generated", "study_id"}
        assert p["study_id"] in ids and p["id"].split(":")[0] in ids
        assert isinstance(p["generated"], str) and "<s>" not in p["generated"] and "</s>" not in p["generated"]
    assert sum(bool(p["generated"]) for p in preds) >= len(preds) // 2  # the tokens really decode to text
    assert {p["turn"] for p in preds if p["task"] == "vqa"} == {0, 1}
    assert {p["region"] for p in preds if p["task"] == "report"} == {"study", "chest"}
    text = (tmp_path / "predictions.jsonl").read_text() + (tmp_path / "metrics.json").read_text()
    assert "patient_" not in text and "THANG" not in text

    skipped = {s["id"]: s["reason"] for s in metrics["skipped"]}
    assert "shape" in skipped["bad-shape"] and "pseudonym" in skipped["example #10"]
    assert metrics["counts"] == {**metrics["counts"], "examples": 11, "evaluated": 9, "skipped": 2}

    # every number is what the metrics modules compute on predictions.jsonl
    for task in ("report", "vqa"):
        rows = [p for p in preds if p["task"] == task]
        expect = compute_text_metrics([r["generated"] for r in rows], [r["reference"] for r in rows])
        got = metrics["tasks"][task]
        assert got["count"] == len(rows) and {k: got[k] for k in expect} == expect
    rows = [p for p in preds if p["task"] == "report"]
    clinical = clinical_f1([extract_lesions(r["generated"]) for r in rows], [extract_lesions(r["reference"]) for r in rows])
    for k in ("F1-T", "F1-TP", "F1-TF", "F1-TPF"):
        assert metrics["tasks"]["report"][k] == clinical[k]
    assert clinical["details"]["n_ref_lesions"] > 0  # the references really carry lesions
    chest = [r for r in rows if r["region"] == "chest"]
    assert metrics["tasks"]["report"]["by_region"]["chest"]["rougeL"] == compute_text_metrics(
        [r["generated"] for r in chest], [r["reference"] for r in chest])["rougeL"]
    assert metrics["decoding"]["greedy"] and metrics["decoding"]["vqa_history"] == "reference"
    assert any("BERTScore skipped" in n for n in metrics["notes"])


def test_batch_size_buckets_and_mesh_do_not_change_greedy_answers(setup, tmp_path):
    _, examples, tok, vlm = setup
    subset = examples[:4]
    base = evaluate(vlm, tok, subset, tmp_path / "a", decoding=DECODING, progress=False)
    one = evaluate(vlm, tok, subset, tmp_path / "b", progress=False,
                   decoding=dataclasses.replace(DECODING, batch_size=1, length_buckets=(96, 192, 384)))
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = tiny_vlm()
    nnx.update(sharded, place_state(nnx.state(sharded), mesh, VISION_RULES))
    on_mesh = evaluate(sharded, tok, subset, tmp_path / "c", decoding=DECODING, mesh=mesh, progress=False)
    a, b, c = (_read(tmp_path / d / "predictions.jsonl") for d in "abc")
    generated = [p["generated"] for p in a]
    assert generated == [p["generated"] for p in b] == [p["generated"] for p in c]
    assert len(set(generated)) > 1  # different images/prompts really give different answers
    assert base["counts"]["batches"] == 2 and one["counts"]["batches"] == 5 and on_mesh["counts"]["batches"] == 2
    assert bucket_length(97, (96, 192)) == 192 and bucket_length(400, (96, 192)) == 576


def test_sampling_seed_and_vqa_history_modes(setup, tmp_path, monkeypatch):
    _, examples, tok, vlm = setup
    subset = examples[:3]
    sampling = dataclasses.replace(DECODING, temperature=1.0, top_k=50, seed=3)
    runs = [evaluate(vlm, tok, subset, tmp_path / f"s{i}", decoding=dataclasses.replace(sampling, seed=seed),
                     progress=False) for i, seed in enumerate((3, 3, 4))]
    s0, s1, s2 = ([p["generated"] for p in _read(tmp_path / f"s{i}" / "predictions.jsonl")] for i in range(3))
    assert s0 == s1 and s0 != s2 and runs[0]["decoding"]["seed"] == 3

    seen = []
    real = runner_mod.encode_conversation
    monkeypatch.setattr(runner_mod, "encode_conversation",
                        lambda msgs, *a, **k: seen.append(list(msgs)) or real(msgs, *a, **k))
    live = dataclasses.replace(DECODING, vqa_history="generated")
    evaluate(vlm, tok, [subset[2]], tmp_path / "g", decoding=live, progress=False)
    preds = _read(tmp_path / "g" / "predictions.jsonl")
    assert [p["turn"] for p in preds] == [0, 1]
    second = [m for m in seen if len(m) == 3][0]  # user, assistant, user: the prompt of turn 1
    assert second[1].role == "assistant" and second[1].content == preds[0]["generated"]
    seen.clear()
    evaluate(vlm, tok, [subset[2]], tmp_path / "r", decoding=DECODING, progress=False)
    second = [m for m in seen if len(m) == 3][0]
    assert second[1].content == subset[2].turns[0][1]  # reference history by default


def test_bad_settings_and_llava_records():
    with pytest.raises(ValueError, match="vqa_history"):
        DecodingConfig(vqa_history="mixed")
    with pytest.raises(ValueError, match="invalid sampling"):
        DecodingConfig(temperature=-1.0)
    record = {"id": "s1:vqa", "image": "s1", "conversations": [
        {"from": "human", "value": "<image>\nCó hạch không?"}, {"from": "gpt", "value": "Có."},
        {"from": "human", "value": "Ở đâu?"}, {"from": "gpt", "value": "Trung thất."}]}
    ex = EvalExample.from_llava(record, np.zeros((2, 16, 32, 32), np.float32))
    assert ex.turns == (("Có hạch không?", "Có."), ("Ở đâu?", "Trung thất.")) and ex.study_id == "s1"
    with pytest.raises(runner_mod.EvalExampleError):
        EvalExample.from_llava({"conversations": [{"from": "gpt", "value": "x"}]}, ex.image)
