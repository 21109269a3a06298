"""Chat templates against their references: mistral-common's instruct tokenizer (Mistral), the official HF chat
templates rendered by transformers (Llama-2, Qwen2), and Meta's Llama-2 per-turn encoding."""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from jaxpetct.text import prompts
from jaxpetct.text.prompts import Message, PromptError, encode_conversation, render, report_messages
from jaxpetct.text.report import CHEST, HEAD_NECK
from jaxpetct.text.tokenizer import load_tokenizer, mistral_v1_model_file

SYSTEM = "Bạn là bác sĩ y học hạt nhân, trả lời ngắn gọn bằng tiếng Việt."
CONVERSATIONS = {
    "single": [Message("user", "Phổi có tổn thương không?"),
               Message("assistant", "Có. Nốt mờ thùy trên phổi phải, kích thước 9 x 10 mm, SUVmax 3,5.")],
    "system": [Message("system", SYSTEM), Message("user", "Hạch nách có tăng chuyển hóa FDG không?"),
               Message("assistant", "Không. Vài hạch nách hai bên kích thước 10 mm, không tăng chuyển hóa FDG.")],
    "multi": [Message("system", SYSTEM), Message("user", "Gan có bất thường không?"),
              Message("assistant", "Có nốt giảm tỉ trọng 7 mm ở hạ phân thùy VII gan."),
              Message("user", "Nốt này có tăng chuyển hóa FDG không?"),
              Message("assistant", "Không tăng chuyển hóa FDG, khả năng lành tính."),
              Message("user", "Cần làm gì thêm?"), Message("assistant", "Đối chiếu với siêu âm.")],
}


@functools.lru_cache(maxsize=2)
def _mistral_common_tokenizer(serving: bool):
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    mode = ValidationMode.test if serving else ValidationMode.finetuning
    return MistralTokenizer.from_file(str(mistral_v1_model_file()), mode=mode)


@functools.lru_cache(maxsize=4)
def _auto(directory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def _mistral_common(messages, serving=False):
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    tok = _mistral_common_tokenizer(serving)
    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    request = ChatCompletionRequest(messages=[kinds[m.role](content=m.content) for m in messages])
    return tok.encode_chat_completion(request).tokens, tok.instruct_tokenizer.tokenizer


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_mistral_ids_equal_mistral_common(mistral, name):
    msgs = CONVERSATIONS[name]
    ref, sp = _mistral_common(msgs)
    enc = encode_conversation(msgs, mistral, "mistral")
    assert enc.input_ids.tolist() == ref
    answers = [m.content for m in msgs if m.role == "assistant"]
    expected = sum((sp.encode(a, bos=False, eos=False) + [sp.eos_id] for a in answers), [])
    assert enc.input_ids[enc.loss_mask == 1].tolist() == expected
    assert set(np.unique(enc.loss_mask)) <= {0.0, 1.0} and not enc.image_mask.any()
    prompt = encode_conversation(msgs, mistral, "llava-med-v1.5", prompt_only=True)
    assert prompt.input_ids.tolist() == _mistral_common(msgs[:-1], serving=True)[0]
    assert enc.input_ids[:len(prompt)].tolist() == prompt.input_ids.tolist() and enc.loss_mask[len(prompt)] == 1


def test_mistral_matches_mistral_common_on_real_vqa(mistral, realdata):
    rows = [json.loads(x) for x in (realdata / "vqa.jsonl").read_text("utf-8").splitlines()]
    for i in range(0, len(rows) - 1, 2):
        msgs = [Message("user", rows[i]["question"]), Message("assistant", rows[i]["answer"]),
                Message("user", rows[i + 1]["question"]), Message("assistant", rows[i + 1]["answer"])]
        assert encode_conversation(msgs, mistral, "mistral").input_ids.tolist() == _mistral_common(msgs)[0]


def _llama2_meta_reference(messages, sp):
    """Meta's llama `chat_completion` encoding: each "[INST] q [/INST] a " turn gets BOS and EOS; the
    system prompt sits in the first turn inside <<SYS>>; the prompt ends with the last "[INST] q [/INST]"."""
    msgs = list(messages)
    if msgs[0].role == "system":
        msgs = [Message("user", f"<<SYS>>\n{msgs[0].content}\n<</SYS>>\n\n{msgs[1].content}")] + msgs[2:]
    ids, answer_ids = [], []
    for user, answer in zip(msgs[::2], msgs[1::2]):
        prefix = [sp.bos_id] + sp.encode(f"[INST] {user.content.strip()} [/INST]", bos=False, eos=False)
        turn = [sp.bos_id] + sp.encode(f"[INST] {user.content.strip()} [/INST] {answer.content.strip()} ",
                                       bos=False, eos=False) + [sp.eos_id]
        assert turn[:len(prefix)] == prefix
        ids += turn
        answer_ids += turn[len(prefix):]
    if len(msgs) % 2:
        ids += [sp.bos_id] + sp.encode(f"[INST] {msgs[-1].content.strip()} [/INST]", bos=False, eos=False)
    return ids, answer_ids


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_llama2_matches_official_template_and_meta_encoding(llama_dir, mistral_sp, name):
    auto = _auto(llama_dir)
    msgs = CONVERSATIONS[name]
    as_dicts = [{"role": m.role, "content": m.content} for m in msgs]
    assert render(msgs, "llama2") == auto.apply_chat_template(as_dicts, tokenize=False)
    assert render(msgs, "llama-2-chat", prompt_only=True) == auto.apply_chat_template(as_dicts[:-1], tokenize=False)
    tok = load_tokenizer(llama_dir)
    enc = encode_conversation(msgs, tok, "llama2")
    ref_ids, ref_answers = _llama2_meta_reference(msgs, mistral_sp)
    assert enc.input_ids.tolist() == ref_ids
    assert enc.input_ids[enc.loss_mask == 1].tolist() == ref_answers
    prompt = encode_conversation(msgs, tok, "llama2", prompt_only=True)
    assert prompt.input_ids.tolist() == _llama2_meta_reference(msgs[:-1], mistral_sp)[0]


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_chatml_matches_qwen2_template(chatml_dir, name):
    auto = _auto(chatml_dir)
    tok = load_tokenizer(chatml_dir)
    msgs = CONVERSATIONS[name]
    as_dicts = [{"role": m.role, "content": m.content} for m in msgs]
    text = auto.apply_chat_template(as_dicts, tokenize=False)
    assert render(msgs, "qwen2") == text
    enc = encode_conversation(msgs, tok, "chatml")
    assert enc.input_ids.tolist() == auto(text, add_special_tokens=False).input_ids
    answers = [m.content for m in msgs if m.role == "assistant"]
    expected = sum((auto(a + "<|im_end|>", add_special_tokens=False).input_ids for a in answers), [])
    assert enc.input_ids[enc.loss_mask == 1].tolist() == expected
    prompt_text = auto.apply_chat_template(as_dicts[:-1], tokenize=False, add_generation_prompt=True)
    assert render(msgs, "chatml", prompt_only=True) == prompt_text
    prompt = encode_conversation(msgs, tok, "chatml", prompt_only=True)
    assert prompt.input_ids.tolist() == auto(prompt_text, add_special_tokens=False).input_ids


def test_plain_template(mistral):
    msgs = CONVERSATIONS["single"]
    assert render(msgs, "plain") == f"<s>{msgs[0].content}\n{msgs[1].content}</s>"
    enc = encode_conversation(msgs, mistral, "plain")
    answer = mistral.encode(msgs[1].content) + [mistral.eos_id]
    assert enc.input_ids.tolist() == [mistral.bos_id] + mistral.encode(msgs[0].content + "\n") + answer
    assert enc.input_ids[enc.loss_mask == 1].tolist() == answer


@pytest.mark.parametrize("template", ["mistral", "llama2", "chatml", "plain"])
def test_image_tokens_replace_the_placeholder(template, mistral, chatml_dir):
    tok = load_tokenizer(chatml_dir) if template == "chatml" else mistral
    msgs = report_messages("Hình ảnh hạch rốn phổi phải 11 mm, SUVmax 4,7.", "chest", seed=1)
    enc = encode_conversation(msgs, tok, template, num_image_tokens=14)
    where = np.flatnonzero(enc.image_mask)
    assert len(where) == 14 and np.all(np.diff(where) == 1)  # one contiguous block: CT-ViT's 14 tokens
    assert np.all(enc.input_ids[where] == tok.pad_id) and not enc.loss_mask[where].any()
    assert where[-1] < np.flatnonzero(enc.loss_mask)[0]  # inside the user turn, before the answer
    # LLaVA's tokenizer_image_token: the text on each side of <image> is encoded on its own.
    text = next(p.text for p in prompts.template_pieces(msgs, template) if prompts.IMAGE_PLACEHOLDER in p.text)
    before, after = text.split(prompts.IMAGE_PLACEHOLDER)
    after_ids = tok.encode(after)
    assert enc.input_ids[where[-1] + 1: where[-1] + 1 + len(after_ids)].tolist() == after_ids
    if before.strip():
        assert enc.input_ids[where[0] - len(tok.encode(before)): where[0]].tolist() == tok.encode(before)
    # Without image tokens the placeholder line is dropped: the text-only encoding of the same conversation.
    text_only = [prompts.Message(m.role, m.content.replace("<image>\n", "")) for m in msgs]
    assert (encode_conversation(msgs, tok, template).input_ids.tolist()
            == encode_conversation(text_only, tok, template).input_ids.tolist())


def test_truncation_keeps_image_and_some_answer(mistral):
    msgs = report_messages("Chưa phát hiện hình ảnh tăng chuyển hóa FDG bất thường ở nhu mô hai phổi.", "chest")
    full = encode_conversation(msgs, mistral, num_image_tokens=14)
    first_answer = int(np.flatnonzero(full.loss_mask)[0])
    cut = encode_conversation(msgs, mistral, num_image_tokens=14, max_length=first_answer + 3)
    assert len(cut) == first_answer + 3 and cut.input_ids.tolist() == full.input_ids[:first_answer + 3].tolist()
    assert cut.loss_mask.sum() == 3 and cut.image_mask.sum() == 14
    with pytest.raises(PromptError, match="no answer token fits"):
        encode_conversation(msgs, mistral, num_image_tokens=14, max_length=first_answer)
    with pytest.raises(PromptError, match="image tokens do not fit"):
        encode_conversation(msgs, mistral, num_image_tokens=14, max_length=8)
    with pytest.raises(PromptError, match="prompts are never cut"):
        encode_conversation(msgs, mistral, num_image_tokens=14, max_length=8, prompt_only=True)


@pytest.mark.parametrize("messages, kwargs, error", [
    ([Message("assistant", "a")], {}, "alternate"),
    ([Message("user", "q"), Message("user", "q")], {}, "alternate"),
    ([Message("user", "q")], {}, "must end with an assistant answer"),
    ([Message("user", "q"), Message("assistant", "  ")], {}, "answer is empty"),
    ([Message("system", "s")], {}, "at least one user turn"),
    ([Message("user", "q"), Message("assistant", "<image> a")], {}, "only appear in the first user turn"),
    ([Message("user", "<image><image>q"), Message("assistant", "a")], {"num_image_tokens": 2}, "placeholders"),
    ([Message("user", "q"), Message("assistant", "a")], {"num_image_tokens": 14}, "has no <image>"),
    ([Message("user", "q"), Message("assistant", "a")], {"template": "vicuna"}, "unknown chat template"),
    ([Message("user", "q"), Message("assistant", "a")], {"template": "chatml"}, "needs special token '<|im_start|>'"),
    ([Message("tool", "q"), Message("assistant", "a")], {}, "role must be"),
])
def test_bad_conversations_are_refused(mistral, messages, kwargs, error):
    with pytest.raises(PromptError, match=error.replace("|", r"\|")):
        encode_conversation(messages, mistral, **kwargs)


def test_template_needing_bos_refuses_a_tokenizer_without_one(chatml_dir):
    msgs = CONVERSATIONS["single"]
    with pytest.raises(PromptError, match="needs a BOS token"):
        encode_conversation(msgs, load_tokenizer(chatml_dir), "mistral")
    assert encode_conversation(msgs, load_tokenizer(chatml_dir), "plain").loss_mask.sum() > 0  # BOS optional there


def test_default_vietnamese_instructions():
    assert prompts.report_instruction("chest") == "Hãy mô tả hình ảnh PET/CT vùng ngực của bệnh nhân này."
    assert prompts.report_instruction(CHEST) == prompts.report_instruction("chest")
    assert "toàn thân" in prompts.report_instruction(None) and "toàn thân" in prompts.report_instruction("study", 3)
    variants = {prompts.report_instruction("head_neck", seed) for seed in range(60)}
    assert len(variants) == len(prompts.REGION_INSTRUCTIONS) and all("vùng đầu - cổ" in v for v in variants)
    assert [prompts.report_instruction(HEAD_NECK, s) for s in range(10)] == \
        [prompts.report_instruction("head_neck", s) for s in range(10)]
    assert len({prompts.comparison_instruction(s) for s in range(40)}) == len(prompts.COMPARISON_INSTRUCTIONS)
    with pytest.raises(PromptError, match="unknown region"):
        prompts.report_instruction("knee")
    msgs = report_messages("Hình ảnh bình thường.", "abdomen_pelvis", seed=2, system=SYSTEM)
    assert [m.role for m in msgs] == ["system", "user", "assistant"]
    assert msgs[1].content.startswith("<image>\n") and "vùng ổ bụng - khung chậu" in msgs[1].content
    assert [m.role for m in report_messages(None, "chest")] == ["user"]
