"""Reference strings for the text tests: official chat templates and our own Vietnamese sentences."""

# Official templates, as published in meta-llama/Llama-2-7b-chat-hf and Qwen/Qwen2-7B-Instruct tokenizer_config.json.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}"
    "{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Our own Vietnamese sentences (not from the release), for tests that must run without the real samples.
OWN_TEXTS = [
    "Hình ảnh hạch thượng đòn trái kích thước 12 x 9 mm, tăng chuyển hóa FDG (SUVmax: 6,4).",
    "Chưa phát hiện hình ảnh tăng chuyển hóa FDG bất thường ở nhu mô hai phổi.",
    "Khối mờ thùy dưới phổi phải, bờ tua gai, kích thước 31 x 28 mm; SUVmax 11,2. Đối chiếu với mô bệnh học.",
    "Nốt giảm tỉ trọng ở hạ phân thùy VII gan, đường kính 7 mm, không tăng chuyển hoá FDG.",
    "  Hai khoảng trắng,\nmột dòng mới\tvà tab; ký tự đặc biệt: <, >, [, ], /, %, ±, °.  ",
]
