"""A tiny VILA-format checkpoint with random weights: the real layout and code path, on a CPU, in seconds.

A tiny Llama (``llm/``) with a tokenizer trained here (``llama_3``: a byte-level BPE with the ``tokenizers`` library,
knowing the template's special tokens; ``vicuna_v1``: a Llama-2 style SentencePiece model with ``sentencepiece``), a tiny SigLIP tower (``vision_tower/``; 384 px, patch 14 by default, so the 27x27 -> 196-token path is the real
one), and an ``mlp_downsample`` projector (``mm_projector/``). Its answers are noise: anything it produces is a DEMO.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from engines.vlm.templates import TemplateName, get_template

__all__ = ["write_demo_checkpoint", "DEMO_MARKER"]

DEMO_MARKER = "m3edge_demo"
_PROTOCOL_DATA = Path(__file__).resolve().parents[1] / "protocol_data"

_SPECIAL_TOKENS = {
    TemplateName.LLAMA_3: {
        "bos": "<|begin_of_text|>",
        "eos": "<|end_of_text|>",
        "extra": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "unk": None,
    },
    TemplateName.VICUNA_V1: {"bos": "<s>", "eos": "</s>", "extra": [], "unk": "<unk>"},
    TemplateName.HERMES_2: {"bos": "<|startoftext|>", "eos": "<|endoftext|>", "extra": ["<|im_start|>", "<|im_end|>"], "unk": None},
}


def _corpus(template: TemplateName) -> list[str]:
    chat = get_template(template)
    lines = [
        chat.system,
        "This is a CT image. This is a CXR image. This is a MRI image. These are different MRI modalities.",
        "T1(contrast enhanced): , T1: , T2: , FLAIR: Describe the image in detail.",
        "This looks like a CT image. Let me trigger <VISTA3D(hepatic tumor)>. Let me first trigger <CXR()>. <BRATS()>",
        "The results are . The colors in this image describe red: liver, blue: spleen. Use this result to respond to this prompt:",
        "The resulting predictions are: pneumonia: yes, effusion: no. Analyze the image and take these predictions into account.",
        "USER ASSISTANT user assistant system",
        "".join(chr(c) for c in range(32, 127)),
    ]
    cards = _PROTOCOL_DATA / "vila_m3_model_cards.txt"
    if cards.is_file():
        lines.append(cards.read_text())
    return lines * 4


def train_sentencepiece_model(path: Path, lines: list[str], vocab_size: int) -> Path:
    """A tiny Llama-2 style SentencePiece model (BPE, byte fallback, split digits, identity normalisation, dummy prefix,
    <unk>/<s>/</s> = 0/1/2), trained here with the ``sentencepiece`` library, written to ``path``."""
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        hard_vocab_limit=False, byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, num_threads=1, minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return path


def _train_tokenizer(template: TemplateName, vocab_size: int, workdir: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = _SPECIAL_TOKENS[template]
    special_list = [t for t in (specials["unk"], specials["bos"], specials["eos"]) if t] + specials["extra"]
    if template is TemplateName.VICUNA_V1:
        # Llama-2 style: a real SentencePiece model, loaded as VILA loads it (slow, legacy=False).
        from engines.vlm.tokenizer import SentencePieceLlamaTokenizer

        model_file = train_sentencepiece_model(workdir / "tokenizer.model", _corpus(template), vocab_size)
        return SentencePieceLlamaTokenizer(model_file)
    # Llama-3 style: byte-level BPE, <|begin_of_text|> added in front.
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_list,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(template), trainer)
    bos = specials["bos"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token=specials["eos"],
        unk_token=specials["unk"],
        model_max_length=4096,
        padding_side="right",
        additional_special_tokens=specials["extra"] or None,
    )


def write_demo_checkpoint(
    directory: Path,
    template: str = "llama_3",
    *,
    image_size: int = 384,
    patch_size: int = 14,
    llm_hidden_size: int = 64,
    vision_hidden_size: int = 32,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Write a tiny random VILA checkpoint to ``directory`` (created) and return it.

    ``template`` picks the tokenizer (``llama_3``: byte-level BPE with ``<|begin_of_text|>`` ... ``<|eot_id|>``;
    ``vicuna_v1``: a SentencePiece ``tokenizer.model`` with ``<s>``, ``</s>``, as Llama-2 ships it). Load it with ``VilaM3(directory, template=template)``: the checkpoint does not
    name its template, exactly like the published ones.
    """
    template_name = get_template(template).name
    if image_size < 2 * patch_size:
        raise ValueError(f"image_size {image_size} must hold at least 2x2 patches of {patch_size} px")
    directory = Path(directory)
    with tempfile.TemporaryDirectory(prefix="m3edge-demo-tokenizer-") as workdir:
        return _write(directory, template_name, image_size, patch_size, llm_hidden_size, vision_hidden_size,
                      _train_tokenizer(template_name, vocab_size, Path(workdir)), seed)


def _write(directory: Path, template_name: TemplateName, image_size: int, patch_size: int, llm_hidden_size: int,
           vision_hidden_size: int, tokenizer, seed: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from engines.vlm.checkpoint import write_checkpoint
    from engines.vlm.preprocessing import SiglipPreprocessor
    from engines.vlm.projector import MlpDownsampleProjector

    torch.manual_seed(seed)
    llm_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=llm_hidden_size,
        intermediate_size=llm_hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    llm_config.model_max_length = 4096
    llm_config.tokenizer_model_max_length = 4096
    llm = LlamaForCausalLM(llm_config).eval()
    vision_config = SiglipVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=vision_hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
    )
    tower = SiglipVisionModel(vision_config).eval()
    projector = MlpDownsampleProjector(vision_hidden_size, llm_hidden_size).eval()
    preprocessor = SiglipPreprocessor(height=image_size, width=image_size)
    return write_checkpoint(
        directory,
        llm=llm,
        tokenizer=tokenizer,
        vision_tower=tower,
        preprocessor=preprocessor,
        projector=projector,
        model_dtype="float32",
        extra={DEMO_MARKER: True},
    )
