"""Chat templates a recipe may name (`chat_template: chatml`), as mergekit 0.1.5 names them.

Written here (not copied from mergekit): each renders the same text as mergekit's bundled template
of that name for the conversations it accepts, under transformers' Jinja settings (trim_blocks,
lstrip_blocks); `tests/merge/test_mergekit_conformance.py` renders both. mergekit's `alpaca` and
`exaone` are not shipped (their whitespace is its own): a recipe naming them is refused.
"""

from __future__ import annotations

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Llama 3: bos once, a header per turn, the content trimmed, each turn closed by <|eot_id|> and a newline
LLAMA3 = (
    "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# Mistral [INST]: an optional first system message joins the first user turn; turns alternate
MISTRAL = (
    "{%- set turns = messages[1:] if messages[0]['role'] == 'system' else messages %}"
    "{{- bos_token }}"
    "{%- for message in turns %}"
    "{%- if (message['role'] == 'user') != (loop.index0 is even) %}"
    "{{- raise_exception('mistral chat template: after an optional system message, roles must alternate "
    "user/assistant') }}"
    "{%- elif message['role'] == 'user' and loop.first and messages[0]['role'] == 'system' %}"
    "{{- ' [INST] ' + messages[0]['content'] + '\\n\\n' + message['content'] + ' [/INST]' }}"
    "{%- elif message['role'] == 'user' %}{{- ' [INST] ' + message['content'] + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}"
    "{%- else %}{{- raise_exception('mistral chat template: only user and assistant roles, and a first "
    "system message') }}"
    "{%- endif %}"
    "{%- endfor %}"
)
NAMED_TEMPLATES: dict[str, str] = {"chatml": CHATML, "llama3": LLAMA3, "mistral": MISTRAL}
