"""Writes golden.json: what VILA's own tokenizer (transformers 4.36.2, VILA 355fda9's pin: slow ``LlamaTokenizer``,
``use_fast=False, legacy=False``) makes of the texts in CASES, for the tiny SentencePiece model beside this file.

Not a test: run once, by hand, in a throwaway environment that has transformers 4.36.2 and sentencepiece
(``pip install --target /tmp/tf436 transformers==4.36.2 tokenizers==0.15.2 huggingface-hub==0.20.3 sentencepiece protobuf``;
``PYTHONPATH=/tmp/tf436 python tests/unit/engines/data/tiny_llama2_tokenizer/make_golden.py``). The prompts are
tokenised chunk by chunk at each ``<image>`` with -200 between, BOS kept once, as VILA's ``tokenizer_image_token`` does.
"""

import json
import sys
from pathlib import Path

import transformers

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))

from engines.agent import prompts  # noqa: E402  (the repository's own prompt texts, as inputs)
from engines.vlm.base import Conversation  # noqa: E402
from engines.vlm.templates import render_prompt  # noqa: E402

assert transformers.__version__ == "4.36.2", transformers.__version__
tokenizer = transformers.AutoTokenizer.from_pretrained(HERE, use_fast=False, legacy=False)
assert type(tokenizer).__name__ == "LlamaTokenizer", type(tokenizer)

CASES = [
    "</s>USER:",
    "USER: hello</s>USER: The results are",
    "ASSISTANT: This looks like a CT image. Let me trigger <VISTA3D(hepatic tumor)>.</s>USER: The results are",
    " This is a CT image.\nDescribe the image in detail.",
    "\nThis is a CT image.\nDescribe the image in detail.",
    ", T1: ",
    "T1(contrast enhanced): ",
    "a  b\n\nc \u2581 d",
    "<s>A chat</s>",
]


def vila_chunked(prompt: str) -> list[int]:
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    ids = list(chunks[0])
    for chunk in chunks[1:]:
        ids.append(-200)
        ids.extend(chunk[1:])
    return ids


def prompts_for(form: str) -> dict[str, str]:
    """First and feedback turns of the three experts, as the agent writes them, in the vicuna_v1 template."""
    cards = prompts.load_model_cards()
    ct_q, cxr_q, mr_q = "Is there a hepatic tumor in this image?", "Describe the image in detail.", "What abnormality is seen?"
    scores = {"Atelectasis": 0.7, "Effusion": 0.2, "Pneumothorax": 0.6}
    turns = {
        "ct": (prompts.first_turn_text(ct_q, "CT", cards), 1, "Let me trigger <VISTA3D(hepatic tumor)>.",
               prompts.vista3d_feedback_text("red: liver, blue: hepatic tumor", ct_q), 1),
        "cxr": (prompts.first_turn_text(cxr_q, "CXR", cards), 1, "Let me first trigger <CXR()>.",
                prompts.cxr_feedback_text(scores, cxr_q), 0),
        "brats": (prompts.brats_first_turn_text(mr_q, cards), 4, "Let me first trigger <BRATS()>.",
                  prompts.brats_feedback_text(mr_q), 1),
    }
    rendered = {}
    for name, (first, images_1, answer, feedback, images_2) in turns.items():
        opening = prompts.text_as_sent(first, form)
        one = Conversation("vicuna_v1").add("user", opening, (None,) * images_1)
        two = (Conversation("vicuna_v1").add("user", opening, (None,) * images_1).add("assistant", answer)
               .add("user", prompts.text_as_sent(feedback, form), (None,) * images_2))
        rendered[f"{name}_turn_1_{form}"] = render_prompt(one)
        rendered[f"{name}_turn_2_{form}"] = render_prompt(two)
    return rendered


golden = {
    "transformers": transformers.__version__,
    "texts": {text: tokenizer(text).input_ids for text in CASES},
    "prompts": {name: {"prompt": prompt, "ids": vila_chunked(prompt)}
                for form in ("training", "raw") for name, prompt in prompts_for(form).items()},
}
lines = ['{"transformers": ' + json.dumps(golden["transformers"]) + ',', ' "texts": {']
lines += [f"  {json.dumps(text)}: {json.dumps(ids)}," for text, ids in golden["texts"].items()]
lines[-1] = lines[-1].rstrip(",")
lines += [" },", ' "prompts": {']
lines += [f"  {json.dumps(name)}: {json.dumps(entry)}," for name, entry in golden["prompts"].items()]
lines[-1] = lines[-1].rstrip(",")
lines += [" }", "}"]
(HERE / "golden.json").write_text("\n".join(lines) + "\n")
assert json.loads((HERE / "golden.json").read_text()) == golden
print("wrote", HERE / "golden.json")
