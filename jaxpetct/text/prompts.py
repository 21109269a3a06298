"""Chat templates of the paper's decoders, and a conversation's encoding for answer-only training.

A template turns messages into pieces (text, BOS, EOS, a named special token); each text piece is encoded on
its own, as the reference implementations do: mistral-common encodes "[INST] ... [/INST]" and the answer
separately, Meta's Llama-2 `chat_completion` encodes each "[INST] q [/INST] a " turn with BOS/EOS, and LLaVA
tokenises the chunks around `<image>` separately. Encoding pieces (never a rendered string) also makes the
answer span exact: no prefix-length arithmetic, no special token spelled inside user text.

`loss_mask` is 1.0 exactly on the answer tokens and the EOS that closes them (the model must learn to stop);
`image_mask` marks `num_image_tokens` positions that replace the `<image>` placeholder of the first user turn,
where the vision projector's outputs are scattered; their ids (the pad id) are never read.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Optional, Sequence

import numpy as np

from jaxpetct.text import _seeded
from jaxpetct.text.report import ABDOMEN_PELVIS, CHEST, HEAD_NECK, MUSCULOSKELETAL, SECTIONS, nfc
from jaxpetct.text.tokenizer import Tokenizer

IMAGE_PLACEHOLDER = "<image>"
QWEN2_DEFAULT_SYSTEM = "You are a helpful assistant."
TEMPLATES = ("mistral", "llama2", "chatml", "plain")
ALIASES = {"llava-med-v1.5": "mistral", "mistral-instruct": "mistral", "llama-2-chat": "llama2", "qwen2": "chatml"}


class PromptError(ValueError):
    """A conversation cannot be laid out or encoded with a template; the message says which rule failed."""


@dataclasses.dataclass(frozen=True)
class Message:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclasses.dataclass(frozen=True)
class Piece:
    kind: Literal["text", "bos", "eos", "special"]
    text: str = ""  # the text to encode, or a special token's spelling
    train: bool = False  # inside the answer span (loss on)
    optional: bool = False  # a BOS the template uses only if the tokenizer has one


@dataclasses.dataclass(frozen=True)
class Encoded:
    input_ids: np.ndarray  # int32 [T]
    loss_mask: np.ndarray  # float32 [T]
    image_mask: np.ndarray  # bool [T]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def _turns(messages: Sequence[Message], prompt_only: bool) -> tuple[Optional[str], list[tuple[str, Optional[str]]]]:
    """(system, [(user, answer)]) after checking the role order every template assumes."""
    msgs = list(messages)
    for m in msgs:
        if m.role not in ("system", "user", "assistant") or not isinstance(m.content, str):
            raise PromptError(f"bad message {m!r}: role must be system/user/assistant and content a string")
    system = None
    if msgs and msgs[0].role == "system":
        system, msgs = msgs[0].content, msgs[1:]
    if prompt_only and msgs and msgs[-1].role == "assistant":
        msgs = msgs[:-1]  # the prompt for the last answer
    if not msgs:
        raise PromptError("a conversation needs at least one user turn")
    for i, m in enumerate(msgs):
        if m.role != ("user" if i % 2 == 0 else "assistant"):
            raise PromptError(f"turn {i}: roles must alternate user/assistant after an optional system message")
    if prompt_only and msgs[-1].role != "user":
        raise PromptError("a prompt must end with a user turn")
    if not prompt_only and msgs[-1].role != "assistant":
        raise PromptError("a training conversation must end with an assistant answer")
    answers = [m.content for m in msgs[1::2]]
    if not prompt_only and any(not a.strip() for a in answers):
        raise PromptError("an assistant answer is empty: nothing to learn from it")
    users = [m.content for m in msgs[0::2]]
    return system, [(u, answers[i] if i < len(answers) else None) for i, u in enumerate(users)]


def _mistral(system, turns) -> list[Piece]:
    """mistral-common's InstructTokenizerV1: the system prompt joins the first user turn after a blank line."""
    out = [Piece("bos")]
    for i, (user, answer) in enumerate(turns):
        content = f"{system}\n\n{user}" if i == 0 and system else user
        out.append(Piece("text", f"[INST] {content} [/INST]"))
        if answer is not None:
            out += [Piece("text", " " + answer, train=True), Piece("eos", train=True)]
    return out


def _llama2(system, turns) -> list[Piece]:
    """Meta's Llama-2 chat format (and the official HF template): BOS per turn, <<SYS>> inside the first."""
    out = []
    for i, (user, answer) in enumerate(turns):
        content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{user}" if i == 0 and system is not None else user
        out += [Piece("bos"), Piece("text", f"[INST] {content.strip()} [/INST]")]
        if answer is not None:
            out += [Piece("text", f" {answer.strip()} ", train=True), Piece("eos", train=True)]
    return out


def _chatml(system, turns) -> list[Piece]:
    """Qwen2's ChatML: every turn framed by <|im_start|>role\\n ... <|im_end|>\\n; <|im_end|> ends an answer."""
    start, end = Piece("special", "<|im_start|>"), Piece("special", "<|im_end|>")
    out = [start, Piece("text", "system\n" + (QWEN2_DEFAULT_SYSTEM if system is None else system)), end,
           Piece("text", "\n")]
    for user, answer in turns:
        out += [start, Piece("text", "user\n" + user), end, Piece("text", "\n"), start, Piece("text", "assistant\n")]
        if answer is not None:
            out += [Piece("text", answer, train=True), Piece("special", "<|im_end|>", train=True), Piece("text", "\n")]
    return out


def _plain(system, turns) -> list[Piece]:
    """No chat markup (LLaVA's "plain", for projector alignment and base models): user text, newline, answer."""
    out = [Piece("bos", optional=True)]
    if system:
        out.append(Piece("text", system + "\n"))
    for user, answer in turns:
        out.append(Piece("text", user + "\n"))
        if answer is not None:
            out += [Piece("text", answer, train=True), Piece("eos", train=True)]
    return out


_BUILDERS = {"mistral": _mistral, "llama2": _llama2, "chatml": _chatml, "plain": _plain}


def template_pieces(messages: Sequence[Message], template: str, prompt_only: bool = False) -> list[Piece]:
    name = ALIASES.get(template, template)
    if name not in _BUILDERS:
        raise PromptError(f"unknown chat template {template!r}; known: {sorted(TEMPLATES + tuple(ALIASES))}")
    return _BUILDERS[name](*_turns(messages, prompt_only))


def render(messages: Sequence[Message], template: str = "mistral", *, prompt_only: bool = False,
           bos_token: str = "<s>", eos_token: str = "</s>") -> str:
    """The template as one string (what HF `apply_chat_template(tokenize=False)` returns); for logs and checks."""
    spell = {"bos": bos_token, "eos": eos_token}
    return "".join(spell.get(p.kind, p.text) for p in template_pieces(messages, template, prompt_only))


def _check_image(messages: Sequence[Message], num_image_tokens: int) -> list[Message]:
    """The placeholder may appear once, in the first user turn; without image tokens it is dropped (text-only)."""
    if num_image_tokens < 0:
        raise PromptError(f"num_image_tokens must be >= 0, got {num_image_tokens}")
    first_user = next((i for i, m in enumerate(messages) if m.role == "user"), None)
    out = []
    for i, m in enumerate(messages):
        n = m.content.count(IMAGE_PLACEHOLDER)
        if n and i != first_user:
            raise PromptError(f"{IMAGE_PLACEHOLDER} may only appear in the first user turn (found in a {m.role} turn)")
        if n > 1:
            raise PromptError(f"the first user turn holds {n} {IMAGE_PLACEHOLDER} placeholders; one volume, one place")
        if i == first_user and num_image_tokens > 0 and n == 0:
            raise PromptError(f"num_image_tokens={num_image_tokens} but the first user turn has no {IMAGE_PLACEHOLDER}")
        if n and num_image_tokens == 0:
            m = Message(m.role, m.content.replace(IMAGE_PLACEHOLDER + "\n", "", 1).replace(IMAGE_PLACEHOLDER, "", 1))
        out.append(m)
    return out


def encode_conversation(messages: Sequence[Message], tokenizer: Tokenizer, template: str = "mistral", *,
                        num_image_tokens: int = 0, prompt_only: bool = False,
                        max_length: Optional[int] = None) -> Encoded:
    """input_ids, answer-only loss mask and image mask of one conversation (or, prompt_only, of its prompt).

    Over `max_length` a training example is cut on the right (LLaVA's behaviour) as long as the image and at
    least one answer token survive; a prompt is never cut, since generation needs its end.
    """
    msgs = _check_image([Message(m.role, nfc(m.content)) for m in messages], num_image_tokens)
    ids: list[int] = []
    loss: list[float] = []
    image: list[bool] = []

    def add(new: Sequence[int], train: bool, is_image: bool = False) -> None:
        ids.extend(new)
        loss.extend([1.0 if train else 0.0] * len(new))
        image.extend([is_image] * len(new))

    def add_text(text: str, train: bool) -> None:
        if tokenizer.adds_prefix_space and text.startswith(" "):
            text = text[1:]  # the tokenizer's own word boundary stands for this space
        if text:
            add(tokenizer.encode(text), train)

    for p in template_pieces(msgs, template, prompt_only):
        if p.kind == "bos":
            if tokenizer.bos_id is None and not p.optional:
                raise PromptError(f"template {template!r} needs a BOS token; tokenizer {tokenizer.name} has none")
            if tokenizer.bos_id is not None:
                add([tokenizer.bos_id], p.train)
        elif p.kind == "eos":
            add([tokenizer.eos_id], p.train)
        elif p.kind == "special":
            sid = tokenizer.special_id(p.text)
            if sid is None:
                raise PromptError(f"template {template!r} needs special token {p.text!r}; "
                                  f"tokenizer {tokenizer.name} does not have it")
            add([sid], p.train)
        elif IMAGE_PLACEHOLDER in p.text and num_image_tokens > 0:
            before, after = p.text.split(IMAGE_PLACEHOLDER)
            add_text(before, p.train)
            add([tokenizer.pad_id] * num_image_tokens, False, is_image=True)
            add_text(after, p.train)
        else:
            add_text(p.text, p.train)

    if max_length is not None and len(ids) > max_length:
        if prompt_only:
            raise PromptError(f"prompt of {len(ids)} tokens exceeds max_length={max_length}; prompts are never cut")
        if any(image[max_length:]):
            raise PromptError(f"the image tokens do not fit in max_length={max_length}")
        if not any(loss[:max_length]):
            raise PromptError(f"no answer token fits in max_length={max_length} ({len(ids)} tokens)")
        ids, loss, image = ids[:max_length], loss[:max_length], image[:max_length]
    return Encoded(np.asarray(ids, np.int32), np.asarray(loss, np.float32), np.asarray(image, bool))


# --- Default Vietnamese instructions ------------------------------------------------------------------------

REGION_ALIASES = {"head_neck": HEAD_NECK, "chest": CHEST, "abdomen_pelvis": ABDOMEN_PELVIS,
                  "musculoskeletal": MUSCULOSKELETAL}
REGION_PHRASES = {HEAD_NECK: "vùng đầu - cổ", CHEST: "vùng ngực", ABDOMEN_PELVIS: "vùng ổ bụng - khung chậu",
                  MUSCULOSKELETAL: "hệ cơ - xương"}
STUDY_PHRASE = "toàn thân"

# Variant 0 of each list is the canonical wording, used at evaluation; the others are paraphrases for training.
REGION_INSTRUCTIONS = (
    "Hãy mô tả hình ảnh PET/CT {region} của bệnh nhân này.",
    "Mô tả các phát hiện trên hình ảnh PET/CT {region}.",
    "Dựa vào hình ảnh PET/CT, hãy viết phần mô tả hình ảnh cho {region}.",
    "Hãy nêu các bất thường trên hình ảnh PET/CT {region} (nếu có), kèm vị trí, kích thước và mức độ chuyển hóa FDG.",
    "Viết phần mô tả hình ảnh của báo cáo PET/CT cho {region}.",
)
STUDY_INSTRUCTIONS = (
    "Hãy mô tả hình ảnh PET/CT toàn thân của bệnh nhân này và đưa ra nhận định kết quả.",
    "Viết báo cáo PET/CT toàn thân gồm mô tả hình ảnh từng vùng và nhận định kết quả.",
    "Dựa vào hình ảnh PET/CT toàn thân, hãy mô tả các phát hiện và kết luận.",
    "Hãy đọc kết quả PET/CT toàn thân này: mô tả hình ảnh và nhận định.",
)
COMPARISON_INSTRUCTIONS = (
    "Hãy so sánh hai lần chụp PET/CT này và mô tả các thay đổi.",
    "So với lần chụp trước, hình ảnh PET/CT lần này có những thay đổi gì?",
    "Hãy nêu các tổn thương mới, các tổn thương không còn thấy và sự thay đổi kích thước, SUVmax giữa hai lần chụp.",
)


def region_section(region: Optional[str]) -> Optional[str]:
    """The report section of a region name (a section key or its English alias); None is the whole study."""
    if region is None or region in ("study", "whole_body"):
        return None
    key = REGION_ALIASES.get(region, nfc(region))
    if key not in SECTIONS:
        raise PromptError(f"unknown region {region!r}; use one of {sorted(REGION_ALIASES)} or a report section")
    return key


def _variant(options: Sequence[str], seed: Optional[int], *salt: object) -> str:
    return options[0] if seed is None else _seeded.pick(_seeded.rng(seed, *salt), options)


# English, for data.report_language = "en" (the release's reports_en translations); same structure.
EN_REGION_PHRASES = {HEAD_NECK: "the head and neck", CHEST: "the chest", ABDOMEN_PELVIS: "the abdomen and pelvis",
                     MUSCULOSKELETAL: "the musculoskeletal system"}
EN_REGION_INSTRUCTIONS = (
    "Describe the PET/CT findings of {region} for this patient.",
    "Describe the findings on the PET/CT images of {region}.",
    "Based on the PET/CT images, write the findings section for {region}.",
    "List any abnormalities on the PET/CT images of {region}, with location, size and FDG uptake.",
    "Write the findings of the PET/CT report for {region}.",
)
EN_STUDY_INSTRUCTIONS = (
    "Describe the whole-body PET/CT of this patient and give the impression.",
    "Write a whole-body PET/CT report with findings by region and an impression.",
    "Based on the whole-body PET/CT, describe the findings and conclude.",
    "Read this whole-body PET/CT: findings and impression.",
)
LANGUAGES = ("vi", "en")


def report_instruction(region: Optional[str] = None, seed: Optional[int] = None, language: str = "vi") -> str:
    """The instruction for a region's findings (or, region None, the whole report) in `language` ("vi", "en");
    seed None: canonical."""
    if language not in LANGUAGES:
        raise PromptError(f"report language {language!r}; use one of {LANGUAGES}")
    section = region_section(region)
    en = language == "en"
    if section is None:
        return _variant(EN_STUDY_INSTRUCTIONS if en else STUDY_INSTRUCTIONS, seed, "study-instruction")
    phrase = (EN_REGION_PHRASES if en else REGION_PHRASES)[section]
    return _variant(EN_REGION_INSTRUCTIONS if en else REGION_INSTRUCTIONS, seed, "region-instruction",
                    section).format(region=phrase)


def comparison_instruction(seed: Optional[int] = None) -> str:
    return _variant(COMPARISON_INSTRUCTIONS, seed, "comparison-instruction")


def image_turn(text: str) -> str:
    """A first user turn in LLaVA's layout: the placeholder, a newline, the text."""
    return f"{IMAGE_PLACEHOLDER}\n{text}"


def report_messages(target: Optional[str], region: Optional[str] = None, seed: Optional[int] = None,
                    system: Optional[str] = None, language: str = "vi") -> list[Message]:
    """The report-generation conversation for a region or the study; target None gives the prompt alone."""
    msgs = [Message("system", system)] if system is not None else []
    msgs.append(Message("user", image_turn(report_instruction(region, seed, language))))
    if target is not None:
        msgs.append(Message("assistant", target))
    return msgs
