"""Corpus readers, one module per corpus (``conf/corpus/<name>.yaml`` chooses one with ``_target_``).

A reader is a function ``documents(corpus) -> Iterable[str]`` taking the whole ``corpus`` config node
(a plain mapping) and yielding its plain-text documents in a deterministic order; its module may also
define ``describe(corpus) -> str`` for messages. `kdyn.data.corpora` resolves ``corpus._target_``
(default ``kdyn.data.sources.<corpus.name>.documents``) and applies ``corpus.max_documents``. There is no
registry: adding a corpus is one module with a ``documents`` function plus one YAML file naming it.
"""
