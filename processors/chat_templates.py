"""Chat templates for the LLM families tinylmm supports, one Jinja string each.

Every template renders a message's content given either as a string or as a list of parts
({"type": "image"}, {"type": "video"}, {"type": "text", "text": …}); an image part becomes the
`image_token` marker plus a newline (LLaVA's "<image>\\n" before the question). Each assistant turn's
text *and its end-of-turn token* sit inside {% generation %} … {% endgeneration %}, so that
`return_assistant_tokens_mask=True` (and TRL's `assistant_only_loss`) trains the model to stop.
"""

from __future__ import annotations

# The markers written in text where an image / a video goes (the processor expands each into placeholders).
IMAGE_TOKEN, VIDEO_TOKEN = "<image>", "<video>"

# The token that ends a turn in each family; None: the tokenizer's EOS token (Vicuna, plain). Templates write
# these tokens and generation stops at them (`end_of_turn_ids`).
END_OF_TURN = {
    "chatml": "<|im_end|>",
    "llama3": "<|eot_id|>",
    "phi3": "<|end|>",
    "gemma": "<end_of_turn>",
    "vicuna": None,
    "plain": None,
}
# Renders `content` (a string or a list of parts). Markers default to <image> / <video> when the caller
# gives no `image_token` / `video_token` variables (e.g. a plain tokenizer.apply_chat_template call).
_CONTENT = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part.type == 'image' -%}{{ (image_token | default('" + IMAGE_TOKEN + "')) + '\\n' }}"
    "{%- elif part.type == 'video' -%}{{ (video_token | default('" + VIDEO_TOKEN + "')) + '\\n' }}"
    "{%- elif part.type == 'text' -%}{{ part.text }}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)

CHATML = _CONTENT + (
    "{%- for message in messages -%}"
    "{%- if message.role == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ render(message.content) + '"
    + END_OF_TURN["chatml"]
    + "' }}"
    "{% endgeneration %}{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message.role + '\\n' + render(message.content) + '"
    + END_OF_TURN["chatml"]
    + "\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

LLAMA3 = _CONTENT + (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{{ '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' }}"
    "{%- if message.role == 'assistant' -%}"
    "{% generation %}{{ render(message.content) + '" + END_OF_TURN["llama3"] + "' }}{% endgeneration %}"
    "{%- else -%}{{ render(message.content) + '" + END_OF_TURN["llama3"] + "' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
)

PHI3 = _CONTENT + (
    "{%- for message in messages -%}"
    "{{ '<|' + message.role + '|>\\n' }}"
    "{%- if message.role == 'assistant' -%}"
    "{% generation %}{{ render(message.content) + '"
    + END_OF_TURN["phi3"]
    + "' }}{% endgeneration %}{{ '\\n' }}"
    "{%- else -%}{{ render(message.content) + '" + END_OF_TURN["phi3"] + "\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)

# Gemma has no system role: a system message is put before the first user turn's text.
GEMMA = _CONTENT + (
    "{{ bos_token }}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'system' -%}{%- set ns.system = render(message.content) + '\\n\\n' -%}"
    "{%- elif message.role == 'assistant' -%}"
    "{{ '<start_of_turn>model\\n' }}{% generation %}{{ render(message.content) + '"
    + END_OF_TURN["gemma"]
    + "' }}"
    "{% endgeneration %}{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<start_of_turn>' + message.role + '\\n' + ns.system + render(message.content) + '"
    + END_OF_TURN["gemma"]
    + "\\n' }}"
    "{%- set ns.system = '' -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

# Vicuna v1, as in LLaVA-1.5 and TinyLLaVA's `llama` / `phi` templates: turns end with the EOS token.
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA = _CONTENT + (
    "{%- if messages and messages[0].role == 'system' -%}{{ render(messages[0].content) + ' ' }}"
    "{%- else -%}{{ '" + VICUNA_SYSTEM.replace("'", "\\'") + " ' }}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'assistant' -%}"
    "{{ 'ASSISTANT: ' }}{% generation %}{{ render(message.content) + eos_token }}{% endgeneration %}"
    "{%- elif message.role != 'system' -%}{{ 'USER: ' + render(message.content) + ' ' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

# Alignment (LLaVA `plain`): the image markers, then the caption, which alone is supervised. The user's
# text is not rendered (pre-training prompts are random paraphrases of "describe the image"); in string
# content the image markers are written before the video markers.
PLAIN = (
    "{%- for message in messages -%}"
    "{%- if message.role == 'assistant' -%}"
    "{% generation %}"
    "{%- if message.content is string -%}{{ message.content + eos_token }}"
    "{%- else -%}{{ message.content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('')"
    " + eos_token }}{%- endif -%}"
    "{% endgeneration %}"
    "{%- elif message.role == 'user' -%}"
    "{%- if message.content is string -%}"
    "{{ (image_token | default('"
    + IMAGE_TOKEN
    + "')) * message.content.count(image_token | default('"
    + IMAGE_TOKEN
    + "')) }}"
    "{{ (video_token | default('"
    + VIDEO_TOKEN
    + "')) * message.content.count(video_token | default('"
    + VIDEO_TOKEN
    + "')) }}"
    "{%- else -%}{%- for part in message.content -%}"
    "{%- if part.type == 'image' -%}{{ image_token | default('" + IMAGE_TOKEN + "') }}"
    "{%- elif part.type == 'video' -%}{{ video_token | default('" + VIDEO_TOKEN + "') }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

CHAT_TEMPLATES: dict[str, str] = {
    "chatml": CHATML,
    "llama3": LLAMA3,
    "phi3": PHI3,
    "gemma": GEMMA,
    "vicuna": VICUNA,
    "plain": PLAIN,
}

# Special tokens that identify a family in a tokenizer's vocabulary, checked in this order.
_SIGNATURES = (
    ("chatml", ("<|im_start|>", END_OF_TURN["chatml"])),
    ("llama3", ("<|start_header_id|>", END_OF_TURN["llama3"])),
    ("phi3", ("<|assistant|>", END_OF_TURN["phi3"])),
    ("gemma", ("<start_of_turn>", END_OF_TURN["gemma"])),
)


def template_for(name: str) -> str:
    """The Jinja template registered under `name` (chatml, llama3, phi3, gemma, vicuna, plain)."""
    if name not in CHAT_TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; known: {sorted(CHAT_TEMPLATES)}.")
    return CHAT_TEMPLATES[name]


def guess_template_name(tokenizer) -> str:
    """The family of an LLM's tokenizer, from the turn tokens in its vocabulary; Vicuna (which needs
    none) when no family's tokens are there."""
    vocab = tokenizer.get_vocab()
    for name, tokens in _SIGNATURES:
        if all(t in vocab for t in tokens):
            return name
    return "vicuna"


def resolve_chat_template(chat_template: str | None, tokenizer) -> str:
    """A template name, a Jinja string, or None (guessed from the tokenizer) -> a Jinja string."""
    if chat_template is None:
        return template_for(guess_template_name(tokenizer))
    if chat_template in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[chat_template]
    if "{%" not in chat_template and "{{" not in chat_template:
        raise ValueError(
            f"chat_template {chat_template!r} is neither a known name ({sorted(CHAT_TEMPLATES)}) nor Jinja."
        )
    return chat_template


def end_of_turn_ids(chat_template: str | None, tokenizer) -> list[int]:
    """Token ids a reply ends with under `chat_template` (a name or Jinja; None: guessed from the
    tokenizer): the family's end-of-turn token when the template writes it, and the tokenizer's EOS token.
    Generation stops at any of them."""
    template = resolve_chat_template(chat_template, tokenizer)
    vocab = tokenizer.get_vocab()
    ids = [vocab[t] for t in END_OF_TURN.values() if t is not None and t in template and t in vocab]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


__all__ = [
    "CHAT_TEMPLATES",
    "END_OF_TURN",
    "IMAGE_TOKEN",
    "VIDEO_TOKEN",
    "end_of_turn_ids",
    "guess_template_name",
    "resolve_chat_template",
    "template_for",
]
