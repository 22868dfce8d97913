"""gpt: train GPT-style language models with PyTorch Lightning and Hydra."""


class UserError(Exception):
    """A problem with the user's input or files, reported as one line without a traceback."""
