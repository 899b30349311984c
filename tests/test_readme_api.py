"""The README's Python API example runs as written (on the shared CIFAR-10 data) and means what it says."""
from __future__ import annotations

import contextlib
import io
import os
import re

import numpy as np
import pytest
import torch

from tests.conftest import CIFAR10_DATA, PROJECT_ROOT, require


def readme_example() -> str:
    text = (PROJECT_ROOT / "README.md").read_text()
    match = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its API example"
    return match.group(1)


def test_readme_api_example_runs(tmp_path, monkeypatch, isolated_cache, one_thread):
    require(CIFAR10_DATA)
    code = readme_example().replace("../shared/data/cifar10", str(CIFAR10_DATA))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the documented example itself
    auc = float(re.search(r"AUC (\d\.\d+)", out.getvalue()).group(1))
    assert 0.0 <= auc <= 1.0
    assert os.path.isfile(tmp_path / "mocca-cifar10.pt")
    scores, same = namespace["scores"], namespace["same"]
    assert set(scores.per_layer) == {0, 1, 2, 3} and scores.combined.shape == (len(namespace["data"].test),)
    np.testing.assert_allclose(same.combined, scores.combined[:8], rtol=1e-6)  # save/load keeps the model


def test_facade_checks_what_it_is_given(tmp_path):
    from trainers.mocca import MOCCA

    model = MOCCA.for_cifar10(code_length=16, ae_epochs=1, epochs=1, batch_size=8, device="cpu")
    with pytest.raises(ValueError, match="not trained"):
        model.score(torch.rand(4, 3, 32, 32))
    model.fit(torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    model.save(tmp_path / "m.pt")
    other = MOCCA.for_cifar10(code_length=32, device="cpu")
    with pytest.raises(ValueError, match="another architecture"):
        other.load_model(tmp_path / "m.pt")
    assert MOCCA.load(tmp_path / "m.pt").settings.layers == [0, 1, 2, 3]
    with pytest.raises(FileNotFoundError, match="not found"):  # ordinary exceptions for Python users
        MOCCA.load(tmp_path / "missing.pt")
