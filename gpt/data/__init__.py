"""The data: from text (or generated problems) to batches.

Owns the tokenizers and BPE, reading text, the prepared-data store (``store.PreparedData``: the one owner of the
on-disk layout, prepared once under a lock), and one module per data format, each holding its writer and its
``LightningDataModule``: windows of text, whole examples, prompt -> answer examples, arithmetic. The contract of a
format is ``module.TokenDataModule``. Hugging Face's tokenizer files (``hf``) are here too.

May import: the core and ``gpt.models``. Torch-free: ``bpe``, ``tokenizers``, ``text``, ``problems`` (the command
line's checks import their choice lists before any library loads).
"""
