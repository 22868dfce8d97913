"""Our checkpoints as a model of EleutherAI's lm-evaluation-harness (``pip install -e ".[eval]"``): importing this
module registers the model ``gpt`` (``lm_eval.api.registry.register_model``), so any lm-eval task runs on them.

    python -m gpt.eval.harness --model gpt --model_args ckpt_path=<run dir>/checkpoints/best.ckpt --tasks comus_cloze
    python -m gpt.eval.harness --model gpt --model_args gpt2_weights=path/to/hf-gpt2 --tasks hellaswag_local

``python -m gpt.eval.harness`` is lm-eval's own command line (every option of ``lm-eval run``) with our model
registered and the tasks of ``data/eval/harness/`` (the shipped sets, and HellaSwag from a local copy) included.
It never reaches the network: Hugging Face's hub and datasets are put offline unless the environment says
otherwise (``HF_DATASETS_OFFLINE=0``). From Python: ``import gpt.eval.harness`` and
``lm_eval.simple_evaluate(model="gpt", model_args={"ckpt_path": ...}, ...)``.

Log-likelihoods are scored as lm-eval's ``hf`` backend scores them (the same truncation and rolling windows),
batched by length, with the log-softmax taken only at the scored positions; ``generate_until`` runs our batched
KV-cache generation. On a model exported by ``export.py`` the ``hf`` backend gives the same numbers
(``tests/test_harness.py``).
"""

import json
import os
import sys
from pathlib import Path

from gpt import UserError

HARNESS_TASKS = Path(__file__).resolve().parents[2] / "data" / "eval" / "harness"
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}  # read by datasets and huggingface_hub on import

for _key, _value in OFFLINE.items():
    os.environ.setdefault(_key, _value)

try:
    # lm-eval lists its own models when its registry is still empty: make sure they are listed before ours is
    import lm_eval.models  # noqa: F401
    from lm_eval import utils as lm_eval_utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError:
    NOT_INSTALLED = 'lm-evaluation-harness is not installed; pip install -e ".[eval]"'
    if __name__ == "__main__":
        print(f"error: {NOT_INSTALLED}", file=sys.stderr)
        sys.exit(2)
    raise UserError(NOT_INSTALLED) from None

import torch  # after lm_eval: a missing extra is one line

from gpt.data.tokenizers import TextStream, Tokenizer
from gpt.eval.tasks import causal_model_from_checkpoint, continuation_logprobs
from gpt.models.generate import GenerationSettings


@register_model("gpt")
class HarnessModel(TemplateLM):
    """One of our causal checkpoints (``ckpt_path=``), or Hugging Face GPT-2 weights in our GPT
    (``gpt2_weights=`` a directory or file of them), with its tokenizer. ``batch_size`` requests are scored at
    once (``auto`` means 32); ``max_gen_toks`` bounds a generation whose task gives no bound."""

    def __init__(self, ckpt_path: str | None = None, gpt2_weights: str | None = None, batch_size: int | str = 32,
                 device: str | None = None, max_gen_toks: int = 256, **_ignored):
        super().__init__()
        if bool(ckpt_path) == bool(gpt2_weights):
            raise UserError("the gpt model needs one of --model_args ckpt_path=<our .ckpt> or "
                            "gpt2_weights=<a directory of Hugging Face GPT-2 weights>")
        model, self.tokenizer = load_model(ckpt_path, gpt2_weights)
        # lm-eval's command line passes cuda when no --device is given: as its hf backend, fall back to the CPU
        cuda = torch.cuda.is_available()
        self._device = torch.device(device if device and (cuda or not device.startswith("cuda")) else
                                    "cuda" if cuda else "cpu")
        self.model = model.to(self._device).eval()
        self.batch_size = 32 if str(batch_size).startswith("auto") else int(batch_size)
        self.max_gen_toks = int(max_gen_toks)

    @classmethod
    def from_model(cls, model, tokenizer: Tokenizer, batch_size: int = 32) -> "HarnessModel":
        """A model already in memory (the benchmarks build one without a checkpoint)."""
        harness = cls.__new__(cls)
        TemplateLM.__init__(harness)
        harness.model, harness.tokenizer, harness._device = model.eval(), tokenizer, next(model.parameters()).device
        harness.batch_size, harness.max_gen_toks = batch_size, 256
        return harness

    @property
    def eot_token_id(self) -> int:
        if self.tokenizer.eot_id is None:
            raise UserError("this checkpoint's tokenizer has no end token, which lm-eval puts before a text it "
                            "scores from the start; train with a tokenizer that has one")
        return self.tokenizer.eot_id

    @property
    def max_length(self) -> int:
        return self.model.block_size

    @property
    def tokenizer_name(self) -> str:
        return f"{self.tokenizer.kind}-{self.tokenizer.vocab_size}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **_) -> list[int]:
        return self.tokenizer.encode(string)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **_) -> list[tuple[float, bool]]:
        """``requests``: ((context, continuation) or None, context ids, continuation ids)."""
        results = continuation_logprobs(self.model, [(context, continuation) for _, context, continuation
                                                     in requests], self.batch_size)
        for (key, _, _), result in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's log-likelihood from its start, in lm-eval's disjoint windows of the model's context (the
        first conditioned on the end token); the windows of all texts are batched together."""
        windows, owners = [], []
        for number, (text,) in enumerate(request.args for request in requests):
            for context, continuation in map(lm_eval_utils.make_disjoint_window, lm_eval_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                    context_len=1)):
                windows.append((None, context, continuation))
                owners.append(number)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows)):
            totals[owner] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Generations, batched among requests of the same settings and similar lengths; each ends before the
        first of its ``until`` texts, at the end token or after ``max_gen_toks`` tokens. A context longer than the
        model's keeps its last tokens (the window slides as sample.py's does)."""
        results: list[str] = [""] * len(requests)
        groups: dict[str, list[int]] = {}
        for number, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(number)
        for numbers in groups.values():
            settings, until = self.generation_settings(requests[numbers[0]].args[1])
            prompts = {n: self.tok_encode(requests[n].args[0]) or [self.prefix_token_id] for n in numbers}
            numbers.sort(key=lambda n: -len(prompts[n]))
            for start in range(0, len(numbers), self.batch_size):
                chunk = numbers[start:start + self.batch_size]
                texts = generate_texts(self.model, self.tokenizer, [prompts[n] for n in chunk], settings, until)
                for n, text in zip(chunk, texts):
                    results[n] = text
                    self.cache_hook.add_partial("generate_until", requests[n].args, text)
        return results

    def generation_settings(self, gen_kwargs: dict) -> tuple[GenerationSettings, list[str]]:
        """Our settings and the stop texts for lm-eval's ``gen_kwargs`` (greedy unless ``do_sample``)."""
        options = dict(gen_kwargs)
        until = options.pop("until", [])
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(options.get("temperature", 1.0)) if options.get("do_sample") else 0.0
        settings = GenerationSettings.for_tokenizer(
            self.tokenizer, max_new_tokens=int(options.get("max_gen_toks", self.max_gen_toks)),
            temperature=temperature, top_k=options.get("top_k"), top_p=options.get("top_p"))
        return settings, until


def load_model(ckpt_path: str | None, gpt2_weights: str | None):
    """(model, tokenizer) from one of our checkpoints, or from Hugging Face GPT-2 weights with GPT-2's tokenizer."""
    if ckpt_path:
        return causal_model_from_checkpoint(ckpt_path, "lm-eval's tasks")
    from gpt.data.tokenizers import fit_tokenizer
    from gpt.models.configs import GPTConfig
    from gpt.models.hf import gpt2_from_hf, read_hf_state_dict

    tokenizer = fit_tokenizer("gpt2", [])
    state = read_hf_state_dict(gpt2_weights)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, pad_vocab_multiple=64, mlp="gelu_tanh", **gpt2_shape(state))
    return gpt2_from_hf(state, config), tokenizer


def gpt2_shape(state: dict) -> dict:
    """The layers, width and heads of a GPT-2 (124M to 1.5B) from its weights."""
    if "wte.weight" not in state:
        raise UserError("the Hugging Face weights have no tensor 'wte.weight'; is this a GPT-2 checkpoint?")
    n_embd = state["wte.weight"].shape[1]
    n_layer = len({key.split(".")[1] for key in state if key.startswith("h.")})
    return {"n_embd": n_embd, "n_layer": n_layer, "n_head": n_embd // 64}  # every GPT-2 has heads of 64


def generate_texts(model, tokenizer: Tokenizer, prompts: list[list[int]], settings: GenerationSettings,
                   until: list[str]) -> list[str]:
    """The text each prompt's generation gives, cut before the first of ``until``; generation stops once every
    row has ended (a stop text, the end token, or ``settings.max_new_tokens``)."""
    streams = [TextStream(tokenizer) for _ in prompts]
    texts, ended = [""] * len(prompts), [False] * len(prompts)
    for tokens in model.stream(prompts, settings):
        for row, token in enumerate(tokens):
            if ended[row]:
                continue
            if token in settings.stop_ids:
                ended[row] = True
                continue
            texts[row] += streams[row].push(token)
            ended[row] = any(stop in texts[row] for stop in until)
        if all(ended):
            break
    return [cut_at_first(text, until) for text in texts]


def cut_at_first(text: str, stops: list[str]) -> str:
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text


def main() -> None:
    """lm-eval's command line with our tasks included (unless ``--include_path`` is given); a mistake is one line
    and exit status 2, as with every command of the project."""
    from lm_eval.__main__ import cli_evaluate

    arguments = sys.argv[1:]
    if arguments and "--include_path" not in arguments and not {"-h", "--help"} & set(arguments):
        sys.argv += ["--include_path", str(HARNESS_TASKS)]
    try:
        cli_evaluate()
    except (UserError, ValueError) as e:
        if isinstance(e, ValueError) and not str(e).startswith("Tasks not found"):
            raise
        hint = "" if isinstance(e, UserError) else \
            "; ours are the files of data/eval/harness/, and 'python -m gpt.eval.harness ls tasks' lists lm-eval's"
        print(f"error: {e}{hint}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
