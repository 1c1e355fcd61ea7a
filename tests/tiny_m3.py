"""A tiny BGE-M3 built locally (no download), in the layout BAAI/bge-m3 ships: an XLM-RoBERTa
encoder, a Unigram tokenizer trained here on the test corpus, colbert_linear.pt and sparse_linear.pt.
Random weights: it proves the plumbing (dense, sparse, ColBERT), not retrieval quality."""

from __future__ import annotations

import json
from pathlib import Path

CORPUS_EXTRA = [
    "general artist copyright character meta aka 中文 日本語 | - 【】",
    "两个马尾 双马尾 猫耳 狐娘 狐狸 水手服 长发 眼镜",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 ()_:;.,!?'\"/-^",
]


def make_tiny_m3(folder: Path, corpus: list[str], hidden: int = 32, seed: int = 0, layers: int = 2, heads: int = 2,
                 intermediate: int | None = None, vocab_size: int = 400) -> Path:
    """``hidden=1024, layers=24, heads=16, intermediate=4096`` gives a BGE-M3-sized encoder (568M with
    a 250k vocabulary) for throughput benchmarks; the defaults give the 2-layer test model."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>")
    tok.train_from_iterator(list(corpus) + CORPUS_EXTRA, trainer=trainer)
    # The trainer walks Rust HashMaps (randomly seeded per process): the same pieces come out in
    # another order with scores that differ in the last digits each run, so token ids, and the
    # random embedding rows behind them, moved, and rankings that test on random weights with
    # them. Fix the order (specials, then the pieces sorted) and round the scores.
    vocab = json.loads(tok.to_str())["model"]["vocab"]
    rest = sorted((p, round(sc, 2)) for p, sc in vocab if p not in specials)
    tok.model = models.Unigram([(p, 0.0) for p in specials] + rest, specials.index("<unk>"), False)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    fast = XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>")
    fast.save_pretrained(str(folder))
    torch.manual_seed(seed)
    config = XLMRobertaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate or hidden * 2, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, initializer_range=0.5,
    )
    model = XLMRobertaModel(config)
    model.save_pretrained(str(folder))
    torch.save(torch.nn.Linear(hidden, hidden).state_dict(), folder / "colbert_linear.pt")
    sparse = torch.nn.Linear(hidden, 1)
    torch.nn.init.normal_(sparse.weight, std=0.5)
    # Tiny random encoders put every token near one direction: the bias keeps most weights above 0.
    torch.nn.init.constant_(sparse.bias, 3.0)
    torch.save(sparse.state_dict(), folder / "sparse_linear.pt")
    return folder
