"""``mossnet train --data A:w,B:w``: one tokenizer for all sources, a validation loss per source,
exact resume."""

from __future__ import annotations

import shutil

import pytest

from mossnet.errors import DataError
from mossnet.train.loop import train
from mossnet.train.metrics import read_jsonl
from trainer_helpers import make_data_dir


def _cfg(make_cfg, out, data, **kw):
    cfg = make_cfg(out, **kw)
    cfg.data = data
    return cfg


@pytest.fixture(scope="module")
def second_corpus(data_dir, tmp_path_factory):
    copy = tmp_path_factory.mktemp("mix") / "second"
    shutil.copytree(data_dir, copy)  # same tokenizer, another directory
    return copy


def test_mixture_trains_validates_per_source_and_resumes_exactly(make_cfg, data_dir, second_corpus):
    spec = f"{data_dir}:0.7,{second_corpus}:0.3"
    straight = train(_cfg(make_cfg, "straight", spec, max_steps=4, eval_interval=2, ckpt_interval=2))
    records = read_jsonl(straight.out + "/logs/metrics.jsonl")
    sources = {r.get("source") for r in records if r["split"] == "val"}
    assert sources == {data_dir.name, second_corpus.name}
    first = train(_cfg(make_cfg, "resumed", spec, max_steps=2, eval_interval=2))
    second = train(_cfg(make_cfg, "resumed", spec, max_steps=4, eval_interval=2, resume=first.out))
    assert first.losses + second.losses == straight.losses


def test_mixture_of_two_tokenizers_is_refused(make_cfg, data_dir, tmp_path):
    other = make_data_dir(tmp_path / "other", vocab_size=300, n_docs=40)
    with pytest.raises(DataError, match="different tokenizers.*" + other.name):
        train(_cfg(make_cfg, "x", f"{data_dir}:1,{other}:1"))
