"""End to end on the embedded model: a bulk run on two Ray workers, then recall from the adapters.

Each document hides one fact in its middle, outside the 64-token head+tail window, so only an
adapter trained by a worker can supply it to a LIFT+ICL answer in the driver. The run is a session
fixture (tests/conftest.py) with Gated Memory adapters: the Gated Memory and Serve tests answer from the same adapters.
"""

import pytest

from conftest import RECALL_DOCUMENTS, recall_window
from lift_ray.evaluate.metrics import is_correct

pytestmark = pytest.mark.slow


def test_documents_absorbed_by_bulk_workers_are_recalled(recall_bulk_run):
    from lift_ray.infer import LiftEngine

    cfg, docs, summary = recall_bulk_run
    assert summary.error is None and len(summary.absorbed) == 2 and summary.model_loads == 2, summary.to_json()

    engine = LiftEngine.from_config(cfg)
    for doc, (text, question, keywords) in zip(docs, RECALL_DOCUMENTS):
        window = recall_window(engine.loaded.tokenizer, text)
        assert not any(k in window for k in keywords), "the fact must lie outside the window"
        lift_icl = engine.answer(question, doc.doc_id, "lift+icl").answer
        assert is_correct(lift_icl, keywords), (question, lift_icl)
