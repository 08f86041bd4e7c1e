"""How examples become token ids: BOS where the tokenizer puts it by default, nowhere else."""

from __future__ import annotations

import string

from rayfed.data.formatting import source_text, tokenize
from rayfed.types import Example


def _char_tokenizer(with_bos: bool):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<eos>", "<bos>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(string.printable) - set("\x0b\x0c\r")))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    if with_bos:  # as Gemma's tokenizer: every encoding starts with <bos>
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>",
                                   bos_token="<bos>")


EX = Example("t", "c", "Say it.", "abcdefghij", "ok")


def test_a_tokenizer_that_adds_bos_gets_it_first_and_left_truncation_keeps_it():
    tok = _char_tokenizer(with_bos=True)
    [whole] = tokenize([EX], tok, max_source_tokens=1000, max_target_tokens=8)
    assert whole.source_ids == tuple(tok(source_text(EX))["input_ids"])  # what a PEFT user's tokenizer gives
    assert whole.source_ids[0] == tok.bos_token_id
    [cut] = tokenize([EX], tok, max_source_tokens=6, max_target_tokens=8)
    assert cut.source_ids == (tok.bos_token_id, *whole.source_ids[-5:])  # BOS, then the end nearest the answer
    assert tok.bos_token_id not in cut.target_ids and cut.target_ids[-1] == tok.eos_token_id


def test_a_tokenizer_without_default_bos_gets_none():
    tok = _char_tokenizer(with_bos=False)
    [whole] = tokenize([EX], tok, max_source_tokens=1000, max_target_tokens=8)
    assert tok.bos_token_id not in whole.source_ids
    assert "".join(tok.convert_ids_to_tokens(list(whole.source_ids))) == source_text(EX)
    [cut] = tokenize([EX], tok, max_source_tokens=6, max_target_tokens=8)
    assert cut.source_ids == whole.source_ids[-6:]
