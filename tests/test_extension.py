"""The framework takes new parts without a change in gpt/: a model of an installed package (declared under the
entry-point group gpt.models) trains, samples from a fresh process, resumes and is refused by the GPT-2 export in
one line; a data format of one module and one conf/data yaml trains; a metric declared once is kept, shown,
recorded, summarised and drawn."""

import csv
import os
import textwrap
from pathlib import Path

import pytest

from gpt.metrics import read_result

from conftest import TINY_GPT, run_script, sweep_tiny, train_tiny
from test_safety import one_error_line

PLUGIN = '''
from dataclasses import dataclass

import torch
from torch import nn

from gpt.models.configs import ModelConfig
from gpt.models.interface import TokenModel


@dataclass
class MLPConfig(ModelConfig):
    block_size: int = 16
    hidden: int = 32

    def build(self):
        return MLP(self)


class MLP(TokenModel):
    """Each position's next token from its own token and the one before: a model of the interface's minimum."""

    def __init__(self, config: MLPConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden)
        self.out = nn.Linear(2 * config.hidden, config.vocab_size)

    def logits(self, idx, attention_mask=None, positions=None, cache=None):
        here = self.embed(idx)
        before = torch.cat([torch.zeros_like(here[:, :1]), here[:, :-1]], dim=1)
        return self.out(torch.cat([here, before], dim=-1).relu())
'''


def install(site: Path, package: str, code: str, entry_points: str = "") -> dict:
    """A package installed as pip installs one (its module and its dist-info, entry points included) in ``site``;
    the environment that puts ``site`` on the path."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(textwrap.dedent(code))
    info = site / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def test_a_model_of_an_installed_package_trains_samples_resumes_and_reports_mfu(tmp_path):
    env = install(tmp_path / "site", "mlp_plugin", PLUGIN, "[gpt.models]\nmlp = mlp_plugin:MLPConfig\n")
    run = tmp_path / "run"
    model = ["model=bigram", "model._target_=mlp_plugin.MLPConfig", "+model.hidden=32"]
    trained = train_tiny(run, "trainer.max_steps=30", "callbacks.training_metrics.peak_tflops=1", model=model, env=env)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert read_result(run)["best"] < 4.0  # below a uniform guess over 68 tokens (4.22)
    with open(run / "metrics.csv") as f:
        assert all(float(row["perf/mfu"]) > 0 for row in csv.DictReader(f) if row.get("perf/mfu"))
    ckpt = run / "checkpoints" / "best.ckpt"
    sample = run_script("sample.py", f"ckpt_path={ckpt}", "prompt=ROMEO:", "max_new_tokens=20", "temperature=0",
                        env=env)  # a fresh process, which has never imported the plug-in
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.split("\n", 1)[1].startswith("ROMEO:") and len(sample.stdout.splitlines()[1]) >= 6
    resumed = train_tiny(run, "ckpt_path=last", "trainer.max_steps=40", model=model, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert read_result(run)["steps"] == 40
    line = one_error_line(run_script("export.py", f"ckpt_path={ckpt}", f"out_dir={tmp_path / 'export'}", env=env))
    assert "only GPT-2-shaped models export to Hugging Face's GPT-2 format" in line
    uninstalled = one_error_line(run_script("sample.py", f"ckpt_path={ckpt}"))  # the class is looked up, not imported
    assert "unknown model class 'mlp_plugin.MLPConfig'" in uninstalled


FORMAT = '''
import csv
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from gpt.data.module import TokenDataModule
from gpt.data.store import PreparedData, fit, prepare, prepared_name, token_dtype
from gpt.data.windows import FixedWindows, RandomWindows
from gpt.files import atomic_writer


class CsvColumnDataModule(TokenDataModule):
    """Windows of one column of a CSV file, each row a document.

    - ``csv_path``: the CSV file; ``column``: the column whose text is trained on."""

    def __init__(self, *, csv_path: str, column: str = "text", **options):
        super().__init__(**options)
        self.csv_path, self.column = Path(csv_path), column

    def prepared_name(self):
        return prepared_name(self.csv_path, self.tokenizer_kind, self.vocab_size, "column")

    def prepare(self):
        options = {"tokenizer": self.tokenizer_kind, "vocab_size": self.vocab_size, "column": self.column}
        return prepare(self.data_dir, [self.csv_path], options, self.write)

    def write(self, out_dir):
        with open(self.csv_path, newline="") as f:
            rows = [row[self.column] for row in csv.DictReader(f)]
        tok = fit(self.tokenizer_kind, lambda: rows, lambda: rows, self.vocab_size)
        data, cut = PreparedData(out_dir), len(rows) * 9 // 10
        counts = {}
        for split, texts in (("train", rows[:cut]), ("val", rows[cut:])):
            ids = [i for text in texts for i in tok.encode(text) + [tok.eot_id]]
            with atomic_writer(data.split_path(split)) as f:
                np.asarray(ids, dtype=token_dtype(tok.vocab_size)).tofile(f)
            counts[f"{split}_tokens"] = len(ids)
        return tok, counts

    def train_dataloader(self):
        windows = RandomWindows(self.prepared.split("train"), self.block_size, self.batch_size, self.seed,
                                rank=self.rank, world_size=self.world_size, accumulate=self.accumulate,
                                start_batch=self.first_batch())
        return self.loader(windows, batch_size=None)

    def val_dataloader(self):
        return self.loader(FixedWindows(self.prepared.split("val"), self.block_size, 64), batch_size=self.batch_size)
'''


def test_a_data_format_of_one_module_and_one_yaml_prepares_and_trains(tmp_path):
    env = install(tmp_path / "site", "csv_format", FORMAT)
    conf = tmp_path / "conf" / "data"
    conf.mkdir(parents=True)
    (conf / "csv_column.yaml").write_text("defaults:\n  - _common\n  - _self_\n\n_target_: csv_format.CsvColumnDataModule"
                                          "\ncsv_path: ???\ncolumn: text\nbatch_size: 8\n")
    table = tmp_path / "lines.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["speaker", "text"])
        for line in (Path(__file__).parents[1] / "data" / "tinyshakespeare.txt").read_text().splitlines()[:3000]:
            writer.writerow(["?", line])
    common = [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "data=csv_column", f"data.csv_path={table}"]
    prepared = run_script("prepare.py", *common, f"paths.data_dir={tmp_path / 'data'}", env=env)
    assert prepared.returncode == 0 and "vocabulary" in prepared.stdout, prepared.stderr[-2000:]
    run = tmp_path / "run"
    trained = run_script("train.py", *common, *TINY_GPT, "trainer.max_steps=20", "trainer.enable_progress_bar=false",
                         "callbacks.text_samples.prompt=T",  # its rows hold no line ends
                         f"hydra.run.dir={run}", f"paths.data_dir={tmp_path / 'data'}", env=env)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert read_result(run)["steps"] == 20


METRIC = '''
import lightning as L

from gpt.metrics import Metric, declare

VOWELS = declare(Metric("val/vowel_share", "vowel_share", "max", "vowel share", ".3f", progress_bar=True))


class VowelShare(L.Callback):
    """The share of vowels in a greedy sample of the model: declared once above, logged here."""

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        tok = trainer.datamodule.tokenizer
        from gpt.models.generate import GenerationSettings
        text = tok.decode(pl_module.model.generate([tok.encode("T")], GenerationSettings(max_new_tokens=32,
                                                                                            temperature=0))[0])
        pl_module.log(VOWELS.name, sum(c in "aeiou" for c in text) / len(text))
'''


def test_a_metric_declared_once_is_kept_shown_recorded_summarised_and_drawn(tmp_path):
    env = install(tmp_path / "site", "vowels", METRIC)
    sweep = tmp_path / "sweep"
    result = sweep_tiny(sweep, "+callbacks.vowels._target_=vowels.VowelShare",
                        "callbacks.checkpoints.monitor=val/vowel_share", "optim.lr=3e-3,1e-2", "trainer.max_steps=20",
                        "trainer.val_every_n_steps=10", "trainer.enable_progress_bar=true", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    job = read_result(sweep / "0")
    assert job["monitor"] == "val/vowel_share" and job["mode"] == "max"  # from its declaration alone
    assert job["best"] == job["vowel_share"] and job["metrics"]["val/vowel_share"]["label"] == "vowel share"
    with open(sweep / "0" / "metrics.csv") as f:
        logged = [float(row["val/vowel_share"]) for row in csv.DictReader(f) if row["val/vowel_share"]]
    assert job["best"] == pytest.approx(max(logged))  # kept by its direction
    assert "val/vowel_share" in result.stderr  # on the progress line
    assert "best vowel share first" in result.stdout  # the sweep table ranks by it
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    shares = [float(row["vowel_share"]) for row in rows]
    assert shares == sorted(shares, reverse=True)
    assert (sweep / "vowel_share_curves.png").is_file() and (sweep / "best_vowel_share.png").is_file()
    drawn = run_script("-m", "gpt.eval.compare", str(sweep), "--out", str(tmp_path / "plots"))  # a fresh process
    assert drawn.returncode == 0 and (tmp_path / "plots" / "vowel_share_curves.png").is_file(), drawn.stderr
