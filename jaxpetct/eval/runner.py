"""Evaluation over a split: report generation (per region or whole study) and multi-turn VQA -> two files.

`evaluate(model, tokenizer, examples, out_dir, decoding=..., tasks=...)` answers every example with batched,
jitted generation (`vlm_generate`) and writes, atomically (temp file + os.replace, process 0 only):

  predictions.jsonl  one line per answer: {"id", "task", "prompt", "reference", "generated", "study_id",
                     "region" (report) | "turn" (vqa)}. "id" is the example's pseudonymous id, with "#<turn>" for VQA;
                     "prompt" is the question/instruction of that turn (the chat template and history are implied
                     by the decoding settings). Nothing else about the patient is written.
  metrics.json       per task: the text metrics of `jaxpetct.eval.metrics` (0-100) on exactly the lines of
                     predictions.jsonl, plus for report generation the clinical F1-T/TP/TF/TPF of
                     `jaxpetct.eval.clinical` with the deterministic lesion extractor, and per-region text metrics;
                     BERTScore when a local encoder folder is given (otherwise a note says it was skipped); counts,
                     decoding settings, skipped examples with reasons, timing.

An example is an `EvalExample`: a pseudonymous id, the encoder-ready volume (C, D, H, W; or a `LazyVolume` that
only the process holding its batch row reads, in a multi-host job) and one or more (question, reference answer) turns; `EvalExample.report` / `.vqa` / `from_llava` build them. Bad examples
(wrong volume shape, an id that is not a pseudonym, a prompt the template rejects) are skipped with a reason and
the run goes on. VQA turns see earlier turns' reference answers or the model's own (`DecodingConfig.vqa_history`).
Every process of a multi-host job walks the same examples in the same order and gets every answer back; process 0
writes the files, so each example appears exactly once whatever the number of hosts.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import re
import time
from typing import Iterable, Mapping, Optional, Sequence, Union

import jax
import numpy as np

from jaxpetct.atomic import open_atomic, write_text
from jaxpetct.eval.clinical import clinical_f1
from jaxpetct.eval.closed_vqa import closed_form_accuracy
from jaxpetct.eval.lesions_en import extractor_for
from jaxpetct.eval.metrics import compute_text_metrics
from jaxpetct.eval.vlm_generate import DecodingConfig, LazyVolume, PromptRow, VLMGenerator
from jaxpetct.models.vlm import VLM
from jaxpetct.text.prompts import Message, PromptError, encode_conversation, image_turn, report_instruction
from jaxpetct.text.report import nfc
from jaxpetct.text.tokenizer import Tokenizer
from jaxpetct.errors import UserError

TASKS = ("report", "vqa")
PREDICTIONS, METRICS = "predictions.jsonl", "metrics.json"
PSEUDONYM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")  # no spaces or slashes: never a release path/name


class EvalExampleError(UserError, ValueError):
    """An example that cannot be evaluated; the message gives the reason, never patient data."""


@dataclasses.dataclass(frozen=True)
class EvalExample:
    id: str  # pseudonymous (e.g. Study.study_id, or "<study_id>:<region>")
    task: str  # "report" | "vqa"
    image: Union[np.ndarray, LazyVolume]  # (C, D, H, W) float32: the encoder's input, as the pipeline decodes it
    turns: tuple[tuple[str, str], ...]  # (question or instruction, reference answer); no <image> placeholder
    region: Optional[str] = None  # report: region name, None = whole study
    study_id: Optional[str] = None

    @classmethod
    def report(cls, id: str, image: np.ndarray, reference: str, region: Optional[str] = None,
               study_id: Optional[str] = None, language: str = "vi") -> "EvalExample":
        """A report-generation example with the canonical instruction of its region in `language`."""
        instruction = report_instruction(region, language=language)
        return cls(id, "report", image, ((instruction, reference),), region, study_id or id)

    @classmethod
    def vqa(cls, id: str, image: np.ndarray, pairs: Sequence[tuple[str, str]], study_id: Optional[str] = None,
            region: Optional[str] = None) -> "EvalExample":
        return cls(id, "vqa", image, tuple((q, a) for q, a in pairs), region, study_id or id)

    @classmethod
    def from_llava(cls, record: Mapping, image: np.ndarray, study_id: Optional[str] = None) -> "EvalExample":
        """A VQA example from a LLaVA conversation record (`jaxpetct.text.vqa.llava_record`)."""
        turns = record.get("conversations")
        if not isinstance(turns, list) or len(turns) < 2 or len(turns) % 2:
            raise EvalExampleError("a LLaVA record needs human/gpt turn pairs")
        pairs = []
        for q, a in zip(turns[0::2], turns[1::2]):
            if q.get("from") != "human" or a.get("from") != "gpt":
                raise EvalExampleError("LLaVA turns must alternate human/gpt")
            pairs.append((q["value"].replace("<image>\n", "").replace("<image>", "").strip(), a["value"]))
        return cls.vqa(str(record.get("id", "")), image, pairs, study_id or record.get("image"))


def validate(example: EvalExample, input_shape: tuple) -> None:
    if not isinstance(example.id, str) or not PSEUDONYM.fullmatch(example.id):
        raise EvalExampleError("id is not a pseudonym (letters, digits, '_', '.', ':', '-' only; e.g. Study.study_id)")
    if example.task not in TASKS:
        raise EvalExampleError(f"task must be one of {TASKS}")
    if not example.turns or any(not isinstance(q, str) or not isinstance(a, str) for q, a in example.turns):
        raise EvalExampleError("needs at least one (question, reference) turn of strings")
    if example.task == "report" and len(example.turns) != 1:
        raise EvalExampleError("a report example has exactly one turn")
    lazy = isinstance(example.image, LazyVolume)  # read later, by the process whose devices hold its row
    shape = tuple(example.image.shape if lazy else np.shape(example.image))
    if shape != tuple(input_shape):
        raise EvalExampleError(f"volume shape {shape} != the encoder's input {tuple(input_shape)}")
    if not lazy and not np.all(np.isfinite(example.image)):
        raise EvalExampleError("volume has non-finite values")


def _messages(example: EvalExample, turn: int, history: Sequence[str], system: Optional[str]) -> list[Message]:
    msgs = [Message("system", system)] if system is not None else []
    for j in range(turn + 1):
        q = example.turns[j][0]
        msgs.append(Message("user", image_turn(q) if j == 0 else q))
        if j < turn:
            msgs.append(Message("assistant", history[j]))
    return msgs


def _record(example: EvalExample, turn: int, generated: str) -> dict:
    q, ref = example.turns[turn]
    rec = {"id": example.id if example.task == "report" else f"{example.id}#{turn}", "task": example.task,
           "prompt": nfc(q), "reference": nfc(ref), "generated": generated, "study_id": example.study_id}
    if example.task == "report":
        rec["region"] = example.region or "study"
    else:
        rec["turn"] = turn
    return rec


class _Run:
    """The state of one evaluation: the generator, the batch counter, the open predictions file."""

    def __init__(self, generator: VLMGenerator, decoding: DecodingConfig, sink):
        self.gen, self.decoding, self.sink = generator, decoding, sink
        self.batches = self.tokens = 0
        self.records: list[dict] = []
        self.skipped: list[dict] = []

    def _row(self, example: EvalExample, turn: int, history: Sequence[str]) -> PromptRow:
        enc = encode_conversation(_messages(example, turn, history, self.decoding.system), self.gen.tokenizer,
                                  self.decoding.template, num_image_tokens=self.gen.num_visual_tokens,
                                  prompt_only=True)
        image = example.image if isinstance(example.image, LazyVolume) else np.asarray(example.image, np.float32)
        return PromptRow(enc.input_ids, enc.image_mask, image)

    def _answer(self, rows: list[PromptRow]) -> list[str]:
        out = []
        for start in range(0, len(rows), self.gen.rows):
            ids = self.gen.generate(rows[start : start + self.gen.rows], self.batches)
            self.batches += 1
            self.tokens += sum(len(t) for t in ids)
            out += [self.gen.decode(t) for t in ids]
        return out

    def chunk(self, examples: list[EvalExample]) -> None:
        """Answer every turn of these examples; with generated history, turn k waits for turn k - 1."""
        answers: dict[int, list[str]] = {i: [] for i in range(len(examples))}
        alive = set(range(len(examples)))
        waves = 1 if self.decoding.vqa_history == "reference" else max(len(e.turns) for e in examples)
        for wave in range(waves):
            work, rows = [], []
            for i in sorted(alive):
                ex = examples[i]
                turns = range(len(ex.turns)) if self.decoding.vqa_history == "reference" else (
                    [wave] if wave < len(ex.turns) else [])
                try:
                    history = ([a for _, a in ex.turns] if self.decoding.vqa_history == "reference" else answers[i])
                    new = [(i, t, self._row(ex, t, history)) for t in turns]
                except PromptError as e:
                    self.skipped.append({"id": ex.id, "reason": f"prompt: {e}"})
                    alive.discard(i)
                    continue
                work += [(i, t) for i, t, _ in new]
                rows += [r for _, _, r in new]
            if not rows:
                continue
            for (i, t), text in zip(work, self._answer(rows)):
                answers[i].append(text)
        for i in sorted(alive):
            for t, text in enumerate(answers[i]):
                rec = _record(examples[i], t, text)
                self.records.append(rec)
                if self.sink is not None:
                    self.sink.write(json.dumps(rec, ensure_ascii=False) + "\n")




def task_metrics(records: Sequence[dict], task: str, *, bertscorer=None, language: str = "vi") -> dict:
    """The metrics of one task from prediction records (what metrics.json holds for it); `language` picks the
    lesion extractor of the clinical F1 (the text metrics' tokens serve both languages)."""
    rows = [r for r in records if r["task"] == task]
    preds, refs = [r["generated"] for r in rows], [r["reference"] for r in rows]
    out: dict = {"count": len(rows), **compute_text_metrics(preds, refs, language=language)}
    if task == "report":
        extract = extractor_for(language)
        clinical = clinical_f1([extract(p) for p in preds], [extract(r) for r in refs])
        out.update({k: clinical[k] for k in ("F1-T", "F1-TP", "F1-TF", "F1-TPF")})
        out["clinical_details"] = clinical["details"]
        regions = sorted({r["region"] for r in rows})
        out["by_region"] = {
            g: {"count": len(sub), **compute_text_metrics([r["generated"] for r in sub], [r["reference"] for r in sub],
                                                          language=language)}
            for g in regions for sub in [[r for r in rows if r["region"] == g]]}
    else:
        out["turns"] = {str(t): sum(1 for r in rows if r["turn"] == t) for t in sorted({r["turn"] for r in rows})}
        out["closed_form"] = closed_form_accuracy(rows)  # the exact values inside the open answers
        out["closed_accuracy"] = out["closed_form"]["all"]["accuracy"]
    if bertscorer is not None:
        out.update(bertscorer.score(preds, refs).summary())
    return out


def _decode_all(run: "_Run", examples: Iterable[EvalExample], tasks: Sequence[str], *, progress: bool) -> int:
    """Feeds the examples of `tasks` to `run` in batches of the decoding batch size; a malformed example is
    recorded in `run.skipped` (by pseudonymous id only) and the rest go on. Returns how many examples were seen."""
    from tqdm.auto import tqdm

    generator, batch_size = run.gen, run.decoding.batch_size
    bar = tqdm(desc="eval", unit="example", disable=not progress)
    chunk: list[EvalExample] = []
    seen = 0
    for k, ex in enumerate(examples):
        if getattr(ex, "task", None) not in tasks:
            continue
        seen += 1
        try:
            validate(ex, generator.input_shape)
        except EvalExampleError as e:
            ok_id = isinstance(ex.id, str) and PSEUDONYM.fullmatch(ex.id)
            run.skipped.append({"id": ex.id if ok_id else f"example #{k}", "reason": str(e)})
            continue
        chunk.append(ex)
        if len(chunk) == batch_size:
            run.chunk(chunk)
            bar.update(len(chunk))
            chunk = []
    if chunk:
        run.chunk(chunk)
        bar.update(len(chunk))
    bar.close()
    return seen


def answer_all(generator: VLMGenerator, decoding: DecodingConfig,
               examples: Iterable[EvalExample]) -> tuple[list[dict], list[dict]]:
    """(prediction records, skipped examples) of `examples`, batched exactly as `evaluate` batches them; nothing is
    written (prediction for new studies uses it)."""
    run = _Run(generator, decoding, None)
    _decode_all(run, examples, TASKS, progress=False)
    return run.records, run.skipped


def evaluate(model: VLM, tokenizer: Tokenizer, examples: Iterable[EvalExample], out_dir, *,
             decoding: DecodingConfig = DecodingConfig(), tasks: Sequence[str] = TASKS, mesh=None,
             bertscore_model=None, bertscore_layer: Optional[int] = None, progress: bool = True,
             language: str = "vi") -> dict:
    """Evaluate `model` on `examples` of the wanted `tasks`; writes predictions.jsonl and metrics.json into
    `out_dir` and returns the metrics dict (see the module docstring)."""
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; choose among {TASKS}")
    writer = jax.process_index() == 0
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generator = VLMGenerator(model, tokenizer, decoding, mesh)
    start = time.perf_counter()
    # predictions.jsonl appears whole or not at all (process 0 writes it; the others only decode their rows)
    with (open_atomic(out / PREDICTIONS, "w") if writer else contextlib.nullcontext()) as sink:
        run = _Run(generator, decoding, sink)
        seen = _decode_all(run, examples, tasks, progress=progress and writer)
    seconds = time.perf_counter() - start
    scorer, notes = None, []
    if bertscore_model is not None:
        from jaxpetct.eval.bertscore import BertScorer

        scorer = BertScorer(bertscore_model, layer=bertscore_layer)
    else:
        from jaxpetct.eval.bertscore import SKIP_MESSAGE

        notes.append(SKIP_MESSAGE)
    metrics = {
        "tasks": {t: task_metrics(run.records, t, bertscorer=scorer, language=language)
                  for t in tasks if any(r["task"] == t for r in run.records)},
        "counts": {"examples": seen, "evaluated": seen - len(run.skipped), "predictions": len(run.records),
                   "skipped": len(run.skipped), "generated_tokens": run.tokens, "batches": run.batches},
        "decoding": decoding.to_json(),
        "report_language": language,
        "model": {"num_visual_tokens": generator.num_visual_tokens, "input_shape": list(generator.input_shape),
                  "prefix_lm": generator.prefix_lm, "tokenizer": tokenizer.name},
        "skipped": run.skipped,
        "notes": notes,
        "timing": {"seconds": seconds, "tokens_per_second": run.tokens / seconds if seconds > 0 else 0.0},
    }
    if writer:
        write_text(out / METRICS, json.dumps(metrics, ensure_ascii=False, indent=2) + "\n")
    return metrics
