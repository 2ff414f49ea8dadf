"""The trainer's side of changing models: a candidate request is fitted once (not again after a restart),
given up after repeated failures without stopping normal fits, and promoted parameters are taken once; a
promotion it cannot use does not stop the trainer.  A stand-in engine: no Spark."""

from __future__ import annotations

import pytest

from model import ModelParams, RatingParams
from storage.sqlite import SQLiteStore
from storage.steering import Steering
from trainer.loop import CANDIDATE_FIT, CANDIDATE_TRIES, RetrainPolicy, Trainer


class StandIn:
    """What the loop drives (trainer/loop.py's Engine), recording each fit."""

    def __init__(self, store, model_dir):
        self.store, self.model_dir, self.tune_budget, self.params_source = store, model_dir, None, "saved"
        self.params = ModelParams()
        self.fits: list[tuple] = []
        self.fail = 0
        self.meta = {"version": 1, "seq": 0, "n_ratings": 10, "created": 0.0, "params": self.params.as_dict()}

    def current_meta(self):
        return self.meta

    def matches(self, meta):
        return meta is not None and ModelParams.from_dict(meta["params"]) == self.params

    def fit_and_publish(self, seq=None, params=None, serve=True):
        if self.fail:
            self.fail -= 1
            raise RuntimeError("Java heap space")
        number = self.meta["version"] + 1 + len(self.fits)
        self.fits.append((number, params, serve))
        if serve:
            self.meta = {**self.meta, "version": number, "params": self.params.as_dict()}
        return number

    def adopt(self, params, source="promoted"):
        self.params, self.params_source = params, source

    def share_versions(self):
        return None

    def tune(self):
        raise AssertionError("no tuning here")

    def cancel(self):
        return None


@pytest.fixture
def stand_in(tmp_path):
    store = SQLiteStore(tmp_path / "ratings.db")
    engine = StandIn(store, tmp_path)
    yield engine, Steering(store)
    store.close()


def test_a_candidate_is_fitted_once_even_across_a_restart(stand_in):
    engine, steering = stand_in
    steering.request_candidate({"rating": {"rank": 16}}, serve=False)
    trainer = Trainer(engine, RetrainPolicy(None, None, 0))
    assert trainer._due() == CANDIDATE_FIT
    trainer._work(CANDIDATE_FIT)
    (number, params, serve), = engine.fits
    assert (number, params.rating.rank, serve) == (2, 16, False) and engine.params == ModelParams()
    assert steering.candidate_request()["done"] == 2
    assert trainer._due() is None and Trainer(engine, RetrainPolicy(None, None, 0))._due() is None  # restarted


def test_a_candidate_that_keeps_failing_is_given_up_and_normal_fits_go_on(stand_in):
    engine, steering = stand_in
    steering.request_candidate({"rating": {"rank": 900}}, serve=False)
    engine.fail = CANDIDATE_TRIES
    trainer = Trainer(engine, RetrainPolicy(None, None, 0))
    for _ in range(CANDIDATE_TRIES):
        assert trainer._due() == CANDIDATE_FIT
        with pytest.raises(RuntimeError):
            trainer._work(CANDIDATE_FIT)
    assert "Java heap space" in steering.candidate_request()["failed"]
    engine.store.request_retrain()
    assert trainer._due() == "a fit was requested"


def test_serve_true_with_parameters_makes_them_the_datasets(stand_in):
    engine, steering = stand_in
    steering.request_candidate({"rating": {"rank": 8}}, serve=True)
    trainer = Trainer(engine, RetrainPolicy(None, None, 0))
    trainer._work(trainer._due())
    assert engine.params.rating.rank == 8 and engine.fits == [(2, None, True)]


def test_promoted_parameters_are_taken_once_and_unusable_ones_do_not_stop_the_trainer(stand_in):
    engine, steering = stand_in
    steering.store.put_meta("serving_plan", '{"pinned": null, "experiment": {"name": "e", "arms": '
                            '{"control": 1, "candidate": 2}, "traffic": {"control": 50, "candidate": 50}, '
                            '"control": "control", "started": 1.0}}')
    with steering.store.writing() as db:
        db.execute("INSERT INTO experiments (name, spec, started) VALUES ('e', '{}', 1.0)")
    promoted = ModelParams(RatingParams(rank=6)).as_dict()
    steering.stop("e", {"promoted": "candidate"}, 2, promoted)
    trainer = Trainer(engine, RetrainPolicy(None, None, 0))
    assert trainer._due().startswith("the published model was fitted")  # the new parameters: one fit
    assert engine.params.rating.rank == 6 and steering.promoted()["applied"]
    engine.params = ModelParams()  # an operator's params.json since: a taken promotion is not taken again
    trainer._due()
    assert engine.params == ModelParams()
    steering.store.put_meta("promoted_params", '{"at": 5.0, "version": 1, "params": {"rating": {"rank": -3}}}')
    trainer._due()  # logged, and the dataset's parameters stay
    assert engine.params == ModelParams() and "rating rank" in steering.promoted()["error"]
