"""torch.compile on the CPU: the loss is part of the compiled graph, and neither varied padded batches nor
generation compile graph after graph. Graphs are counted with a backend that records each one it is given: dynamo
traces and guards exactly as for inductor, without inductor's 20-40 s per graph on this CPU."""

import pytest
import torch
from torch.nn import functional as F

from gpt.data.examples import ExamplesDataModule
from gpt.models.configs import GPTConfig
from gpt.models.generate import GenerationSettings
from gpt.training.objectives import CausalLM, MaskedLM

from conftest import SHAKESPEARE


class GraphRecorder:
    """A torch.compile backend that keeps every graph it compiles and runs it as traced."""

    def __init__(self):
        self.graphs = []

    def __call__(self, graph_module, example_inputs):
        self.graphs.append(graph_module)
        return graph_module.forward


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()  # graphs compiled by an earlier test of this process do not count
    yield
    torch._dynamo.reset()


def tiny(**options) -> GPTConfig:
    return GPTConfig(**{"vocab_size": 68, "block_size": 256, "n_layer": 1, "n_head": 2, "n_embd": 32, **options})


def test_the_training_step_compiles_the_loss_with_the_model():
    lm = CausalLM(tiny(), optimizer=torch.optim.AdamW)
    recorder = GraphRecorder()
    lm.model.compile(backend=recorder)  # as LanguageModel.configure_model does, with the recording backend
    ids = torch.randint(0, 68, (4, 65))
    loss = lm.training_step({"input_ids": ids[:, :-1], "labels": ids[:, 1:]}, 0)["loss"]
    assert loss.dim() == 0 and len(recorder.graphs) == 1
    targets = {node.target for node in recorder.graphs[0].graph.nodes}
    assert F.cross_entropy in targets  # the logits never leave the graph: no float32 copy of them outside it


def test_varied_padded_batches_compile_a_handful_of_graphs(tmp_path):
    """100 masked-LM batches of Tiny Shakespeare's paragraphs, each padded to a multiple of 64."""
    data = ExamplesDataModule(text_path=str(SHAKESPEARE), cache_dir=str(tmp_path), block_size=256, batch_size=16, mlm_probability=0.15)
    data.prepare_data()
    data.setup()
    lm = MaskedLM(tiny(causal=False), optimizer=torch.optim.AdamW)
    recorder = GraphRecorder()
    lm.model.compile(backend=recorder)
    widths = set()
    for _, batch in zip(range(100), data.train_dataloader()):
        widths.add(batch["input_ids"].shape[1])
        lm.training_step(batch, 0)["loss"].backward()
    print(f"100 batches of {len(widths)} lengths {sorted(widths)}: {len(recorder.graphs)} graphs compiled")
    assert len(widths) > 1 and len(recorder.graphs) <= 4


def test_generation_never_compiles_per_token():
    torch.manual_seed(0)
    model = tiny().build().eval()
    recorder = GraphRecorder()
    model.compile(backend=recorder)
    with torch.no_grad():
        model(torch.randint(0, 68, (2, 16)))  # the compiled forward, as training uses it
    compiled = len(recorder.graphs)
    out = model.generate([[1, 2, 3], [4, 5]], GenerationSettings(max_new_tokens=64, temperature=0.8, top_k=10))
    assert [len(row) for row in out] == [67, 66]
    assert len(recorder.graphs) == compiled == 1  # 64 tokens, 64 lengths: all generated without compiling
