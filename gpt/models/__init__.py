"""The models: plain ``nn.Module``s, no Lightning.

Owns the model configs (checked field by field, torch-free, with the plug-in models of installed packages), the
interface every model gives the framework (``TokenModel``), GPT and the bigram baseline, generation (its settings,
sampling with a KV cache, mask filling), int8 quantization and the Hugging Face GPT-2 weight mapping.

May import: the package's core (``gpt``, ``gpt.files``, ``gpt.context``, ``gpt.compat``, ``gpt.metrics``) only.
"""
