"""int8 inference: a model's linear layers with int8 weights (``sample.py quantize=int8``).

torchao's int8 weight-only quantization, one scale per output row: it is PyTorch's own library for it (the older
``torch.ao.quantization.quantize_dynamic`` warns at every call that it is deprecated and to use torchao), and it
keeps generation's guarantees that dynamic activation quantization breaks: scaling activations per tensor across a
batch makes a prompt's tokens depend on the prompts beside it. A linear layer whose weight is an embedding's too (a
tied head) stays as it is: quantizing it would untie it, keeping a second copy of the matrix.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from gpt import UserError


def quantize_int8(model: nn.Module) -> nn.Module:
    """``model`` with the weights of its linear layers in int8, in place."""
    try:
        with quiet("torchao", "torch.utils._pytree"):  # it notes CUDA kernels missing from a CPU build, at import
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise UserError("quantize=int8 needs torchao: pip install -e '.[int8]'") from None
    embedded = {id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)}
    quantize_(model, Int8WeightOnlyConfig(set_inductor_config=False),  # True would change inductor's global settings
              filter_fn=lambda module, name: isinstance(module, nn.Linear) and id(module.weight) not in embedded)
    return model


@contextmanager
def quiet(*names: str) -> Iterator[None]:
    """The loggers named say only errors while the block runs."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers (tied ones once), the int8 data and scales of quantized weights included
    (their tensors report the size of the float weight they stand for)."""
    def size(tensor) -> int:
        if hasattr(tensor, "__tensor_flatten__"):  # a tensor subclass: the tensors it holds
            names, _ = tensor.__tensor_flatten__()
            return sum(size(getattr(tensor, name)) for name in names if getattr(tensor, name) is not None)
        return tensor.numel() * tensor.element_size()

    unique = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(size(t) for t in unique.values())
