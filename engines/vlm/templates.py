"""VILA's conversation templates, byte-exact to NVlabs/VILA 355fda9 ``llava/conversation.py``.

Three templates matter for VILA-M3: ``llama_3`` (the 8B), ``vicuna_v1`` (the 3B and 13B) and ``hermes-2`` (VILA1.5-40B style).
The template is chosen by a setting (or by naming a known checkpoint), never guessed from a directory name.

Rendering follows VILA's ``Conversation.get_prompt`` for plain-string messages: the prompt always ends with an empty
assistant turn (``ASSISTANT:`` for vicuna, the assistant header for llama_3 and hermes-2). Because the ``TWO`` separator style
picks separators by position, turns must alternate user, assistant, user, ... and end with a user turn.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from engines.vlm.base import Conversation, Message, Role

__all__ = [
    "TemplateName",
    "ChatTemplate",
    "TEMPLATES",
    "KNOWN_CHECKPOINT_TEMPLATES",
    "get_template",
    "template_for_checkpoint",
    "render_prompt",
    "render_messages",
    "stop_strings",
    "single_turn_wrapping",
]


class TemplateName(str, enum.Enum):
    LLAMA_3 = "llama_3"
    VICUNA_V1 = "vicuna_v1"
    HERMES_2 = "hermes-2"


class SeparatorStyle(str, enum.Enum):
    TWO = "two"  # vicuna: "ROLE: message" + sep (user) / sep2 (assistant); empty turn "ROLE:"
    LLAMA_3 = "llama_3"  # role + message + sep (sep2 for a non-empty last message); empty turn: role
    MPT = "mpt"  # role + message + sep; empty turn: role


@dataclass(frozen=True)
class ChatTemplate:
    name: TemplateName
    system: str
    user_role: str
    assistant_role: str
    style: SeparatorStyle
    sep: str
    sep2: str | None
    # The checkpoints trained with it tokenise with Llama-2's SentencePiece model (legacy=False): a text chunk after an
    # <image> starts with a space token in VILA's chunk-by-chunk tokenisation (engines/vlm/tokenizer.py).
    sentencepiece: bool = False

    @property
    def stop_string(self) -> str:
        """What VILA's evaluation stops on: ``sep`` except for the TWO style, where it is ``sep2``."""
        if self.style is SeparatorStyle.TWO:
            assert self.sep2 is not None
            return self.sep2
        return self.sep

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Every string that ends an answer: the stop string, and for ``llama_3`` also ``sep2`` (``<|end_of_text|>``,
        which the template writes after the last message), whatever the tokenizer's own EOS is."""
        if self.style is SeparatorStyle.LLAMA_3 and self.sep2 and self.sep2 != self.stop_string:
            return (self.stop_string, self.sep2)
        return (self.stop_string,)


_LLAMA_3 = ChatTemplate(
    name=TemplateName.LLAMA_3,
    system=(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision assistant. "
        "You are able to understand the visual content that the user provides, "
        "and assist the user with a variety of tasks using natural language."
    ),
    user_role="<|start_header_id|>user<|end_header_id|>\n\n",
    assistant_role="<|start_header_id|>assistant<|end_header_id|>\n\n",
    style=SeparatorStyle.LLAMA_3,
    sep="<|eot_id|>",
    sep2="<|end_of_text|>",
)

_VICUNA_V1 = ChatTemplate(
    name=TemplateName.VICUNA_V1,
    system=(
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    ),
    user_role="USER",
    assistant_role="ASSISTANT",
    style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
    sentencepiece=True,
)

_HERMES_2 = ChatTemplate(
    name=TemplateName.HERMES_2,
    system="<|im_start|>system\nAnswer the questions.",
    user_role="<|im_start|>user\n",
    assistant_role="<|im_start|>assistant\n",
    style=SeparatorStyle.MPT,
    sep="<|im_end|>",
    sep2=None,
)

TEMPLATES: dict[TemplateName, ChatTemplate] = {t.name: t for t in (_LLAMA_3, _VICUNA_V1, _HERMES_2)}

# The published VILA-M3 checkpoints and the template each was trained with (protocol, section 1).
KNOWN_CHECKPOINT_TEMPLATES: dict[str, TemplateName] = {
    "Llama3-VILA-M3-3B": TemplateName.VICUNA_V1,
    "Llama3-VILA-M3-8B": TemplateName.LLAMA_3,
    "Llama3-VILA-M3-13B": TemplateName.VICUNA_V1,
}


def get_template(name: TemplateName | str) -> ChatTemplate:
    try:
        return TEMPLATES[TemplateName(name)]
    except ValueError:
        known = ", ".join(t.value for t in TemplateName)
        raise ValueError(f"unknown conversation template {name!r}; use one of: {known}") from None


def template_for_checkpoint(checkpoint_name: str) -> TemplateName:
    """The template a known checkpoint was trained with; the name is a setting, not a directory name."""
    try:
        return KNOWN_CHECKPOINT_TEMPLATES[checkpoint_name]
    except KeyError:
        known = ", ".join(KNOWN_CHECKPOINT_TEMPLATES)
        raise ValueError(
            f"unknown checkpoint {checkpoint_name!r}: known checkpoints are {known}; "
            "for any other checkpoint set the template explicitly (llama_3, vicuna_v1 or hermes-2)"
        ) from None


def _check_turns(messages: list[Message]) -> None:
    if not messages:
        raise ValueError("the conversation is empty: add a user turn before generating")
    for index, message in enumerate(messages):
        expected = Role.USER if index % 2 == 0 else Role.ASSISTANT
        if message.role is not expected:
            raise ValueError(
                f"turn {index} is {message.role.value!r} but {expected.value!r} was expected: "
                "turns must alternate user, assistant, user, ... (VILA picks separators by position)"
            )
        if not message.text:
            raise ValueError(f"turn {index} is empty: VILA renders an empty turn as the open assistant turn")
    if messages[-1].role is not Role.USER:
        raise ValueError("the conversation must end with a user turn for the model to answer")


def render_messages(template: TemplateName | str, turns: list[tuple[str, str | None]]) -> str:
    """VILA's ``get_prompt`` over (role string, message or None) pairs: the template's own roles, in order."""
    chat = get_template(template)
    if chat.style is SeparatorStyle.TWO:
        seps = [chat.sep, chat.sep2]
        out = chat.system + seps[0]
        for index, (role, message) in enumerate(turns):
            if message:
                out += role + ": " + message + seps[index % 2]
            else:
                out += role + ":"
        return out
    out = chat.system + chat.sep
    for index, (role, message) in enumerate(turns):
        if message:
            if chat.style is SeparatorStyle.LLAMA_3:
                out += role + message + (chat.sep if index < len(turns) - 1 else chat.sep2)
            else:
                out += role + message + chat.sep
        else:
            out += role
    return out


def render_prompt(conversation: Conversation) -> str:
    """The exact prompt for ``conversation`` in its template, ending with the empty assistant turn."""
    _check_turns(conversation.messages)
    chat = get_template(conversation.template)
    roles = {Role.USER: chat.user_role, Role.ASSISTANT: chat.assistant_role}
    turns: list[tuple[str, str | None]] = [(roles[m.role], m.text) for m in conversation.messages]
    turns.append((chat.assistant_role, None))
    return render_messages(chat.name, turns)


def stop_strings(template: TemplateName | str) -> tuple[str, ...]:
    """The strings that end an answer: VILA's stop string for the template (``<|eot_id|>``, ``</s>``, ``<|im_end|>``),
    and for ``llama_3`` its ``sep2`` ``<|end_of_text|>`` too (both backends stop on each, and on the tokenizer's EOS)."""
    return get_template(template).stop_strings


def single_turn_wrapping(template: TemplateName | str) -> tuple[str, str]:
    """(prefix, suffix) that a server applying this template to ONE user message puts around that message.

    TensorRT-LLM's VILA input processor renders whatever text it receives as a single user turn; sending
    ``prompt[len(prefix):-len(suffix)]`` therefore makes the server's final prompt equal ``prompt`` byte for byte.
    """
    chat = get_template(template)
    marker = "\x00m3edge-marker\x00"
    wrapped = render_messages(chat.name, [(chat.user_role, marker), (chat.assistant_role, None)])
    prefix, suffix = wrapped.split(marker)
    return prefix, suffix
