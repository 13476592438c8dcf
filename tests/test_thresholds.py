"""Threshold policies (`method.threshold_policy`): Consistent Teacher's per-class GMM and ARSL's
per-image mean + std give the thresholds their rules define, fall back as documented,
resume exactly, and agree across DDP ranks."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from ssodkit.config import build_config
from ssodkit.detectors.protocol import Detections
from ssodkit.errors import ConfigError
from ssodkit.pseudo.labeler import (
    PseudoLabeler,
    PseudoLabelParams,
    resolve_for_detector,
)
from ssodkit.pseudo.labels import PseudoLabels
from ssodkit.pseudo.thresholds import (
    GMMThreshold,
    MeanStdThreshold,
    dynamic_topk,
    gmm_threshold,
    mean_std_keep,
)

CLASSES = ["a", "b"]


def dets(scores, labels=None) -> Detections:
    scores = torch.tensor(scores, dtype=torch.float32)
    labels = torch.zeros(len(scores), dtype=torch.long) if labels is None else torch.tensor(labels)
    boxes = torch.arange(len(scores), dtype=torch.float32)[:, None] * 10 + torch.tensor([0.0, 0, 5, 5])
    return Detections(boxes, scores, labels)


def f32(x: float) -> float:
    return float(np.float32(x))


# --------------------------------------------------------------------------- an independent EM
def reference_gmm_tau(xs: list[float]) -> float | None:
    """Consistent Teacher's `gmm_policy` written out in plain Python from the textbook EM:
    components at (min, max), variance 1, weights ½; stop when the mean log-likelihood moves
    by < 1e-3 (sklearn's tol, its variance floor 1e-6); τ = among the samples more probable
    under the high component, the one of highest mixture density."""
    if len(xs) < 4:
        return None
    w, mu, var = [0.5, 0.5], [min(xs), max(xs)], [1.0, 1.0]

    def log_terms(x):
        return [math.log(w[k]) - 0.5 * math.log(2 * math.pi * var[k]) - (x - mu[k]) ** 2 / (2 * var[k]) for k in (0, 1)]

    def lse(row):
        top = max(row)
        return top + math.log(sum(math.exp(v - top) for v in row))

    previous = -math.inf
    for _ in range(100):
        rows = [log_terms(x) for x in xs]
        norms = [lse(r) for r in rows]
        resp = [[math.exp(v - n) for v in r] for r, n in zip(rows, norms)]
        nk = [sum(r[k] for r in resp) + 10 * np.finfo(np.float64).eps for k in (0, 1)]
        mu = [sum(r[k] * x for r, x in zip(resp, xs)) / nk[k] for k in (0, 1)]
        var = [sum(r[k] * (x - mu[k]) ** 2 for r, x in zip(resp, xs)) / nk[k] + 1e-6 for k in (0, 1)]
        w = [nk[k] / sum(nk) for k in (0, 1)]
        bound = sum(norms) / len(norms)
        if abs(bound - previous) < 1e-3:
            break
        previous = bound
    rows = [log_terms(x) for x in xs]
    high = [(lse(r), x) for r, x in zip(rows, xs) if r[1] > r[0]]
    return max(high)[1] if high else None


@pytest.mark.parametrize("seed", range(6))
def test_gmm_threshold_equals_an_independent_em_on_score_streams(seed):
    rng = random.Random(seed)
    n = rng.randint(4, 100)
    if seed % 2:  # two clusters, as a teacher's background and object scores
        xs = [min(1.0, max(0.05, rng.gauss(0.15, 0.05))) for _ in range(n // 2)]
        xs += [min(1.0, max(0.05, rng.gauss(0.7, 0.1))) for _ in range(n - n // 2)]
    else:
        xs = [rng.uniform(0.05, 1.0) for _ in range(n)]
    xs = [f32(x) for x in xs]  # scores are float32, τ is one of them
    assert gmm_threshold(np.array(xs)) == reference_gmm_tau(xs)


def test_gmm_threshold_by_hand_on_a_symmetric_buffer():
    """{a, a, b, b}: by symmetry the components stay mirrored about (a + b)/2 with equal weights,
    the b's go to the high component and the density is the same at every b: τ = b."""
    assert gmm_threshold(np.array([0.2, 0.2, 0.6, 0.6])) == 0.6
    assert gmm_threshold(np.array([0.6] * 5)) is None  # one value: nothing is more probable high
    assert gmm_threshold(np.array([0.2, 0.6, 0.9])) is None  # fewer than 4 scores


def test_dynamic_topk_keeps_the_round_sum_plus_one_best_boxes():
    scores = torch.tensor([0.3, 0.9, 0.1, 0.8, 0.2])  # Σ = 2.3 → k = int(2.8) = 2 → the 3 best
    assert dynamic_topk(scores, 1.0).tolist() == [True, True, False, True, False]
    assert dynamic_topk(scores, 0.5).tolist() == [False, True, False, True, False]  # int(1.65) = 1
    assert dynamic_topk(torch.tensor([0.9, 0.95]), 1.0).tolist() == [True, True]  # k ≤ n − 1


# --------------------------------------------------------------------------- the gmm filter
def gmm_filter(buffer_size=100, topk_ratio=None, fallback=(0.5, 0.3)):
    return GMMThreshold(torch.tensor(fallback), CLASSES, buffer_size, topk_ratio, gather=lambda *t: t)


def test_gmm_buffers_keep_each_class_newest_scores_first():
    f = gmm_filter(buffer_size=4)
    f.observe(PseudoLabels.from_detections([dets([0.9, 0.8, 0.4], [0, 1, 0]), dets([0.7], [0])]))
    assert f.scores[0].tolist() == [f32(0.9), f32(0.4), f32(0.7), 0.0]
    assert f.scores[1].tolist() == [f32(0.8), 0.0, 0.0, 0.0]
    f.observe(PseudoLabels.from_detections([dets([0.6, 0.5], [0, 0])]))
    assert f.scores[0].tolist() == [f32(0.6), f32(0.5), f32(0.9), f32(0.4)]  # 0.7, the oldest, left


def test_gmm_tau_per_class_and_the_fixed_fallback_until_four_scores():
    f = gmm_filter()
    stream = [0.62, 0.31, 0.93, 0.12, 0.55, 0.87, 0.24, 0.71]
    f.observe(PseudoLabels.from_detections([dets(stream[:3]), dets([0.8, 0.9, 0.7], [1, 1, 1])]))
    # 3 scores each: both classes keep the fixed τ (score_thr 0.5, class_score_thr b: 0.3)
    assert f.thresholds.tolist() == [0.5, f32(0.3)]
    f.observe(PseudoLabels.from_detections([dets(stream[3:])]))
    tau = reference_gmm_tau([f32(x) for x in stream[3:] + stream[:3]])  # newest first
    assert tau is not None and f.thresholds.tolist() == [tau, f32(0.3)]
    assert f.stats == {"thr/a": tau, "thr/b": f32(0.3)}
    kept = f(PseudoLabels.from_detections([dets(stream)])).detections[0].scores.tolist()
    assert kept == [s for s in map(f32, stream) if s > tau]  # strictly above, the one rule


def test_gmm_applies_the_top_k_cut_before_the_class_threshold():
    f = gmm_filter(topk_ratio=1.0)
    # Σ = 2.0 → k = int(2.5) = 2: the three best boxes reach the buffer and the student
    f.observe(PseudoLabels.from_detections([dets([0.7, 0.6, 0.5, 0.1, 0.1])]))
    assert f.scores[0, :4].tolist() == [f32(0.7), f32(0.6), f32(0.5), 0.0]
    kept = f(PseudoLabels.from_detections([dets([0.7, 0.6, 0.5, 0.1, 0.1])])).detections[0].scores
    assert kept.tolist() == [f32(0.7), f32(0.6)]  # cut to 3, then > 0.5 (3 scores: fallback τ)


def test_gmm_state_dict_restores_the_same_thresholds_and_the_same_future(tmp_path):
    params = PseudoLabelParams(score_thr=0.4, threshold_policy="gmm", gmm_buffer=8)
    rng = random.Random(0)
    batches = [[dets([rng.uniform(0.05, 1) for _ in range(5)], [rng.randint(0, 1) for _ in range(5)])]
               for _ in range(6)]
    first = PseudoLabeler(params, CLASSES)
    for batch in batches[:3]:
        first.filter(PseudoLabels.from_detections(batch), observe=True)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    second = PseudoLabeler(params, CLASSES)
    second.load_state_dict(torch.load(tmp_path / "state.pt"))
    assert second.stats == first.stats
    for batch in batches[3:]:
        a = first.filter(PseudoLabels.from_detections(batch), observe=True)
        b = second.filter(PseudoLabels.from_detections(batch), observe=True)
        assert a.counts == b.counts and first.stats == second.stats
    # evaluation-time use (`keep`) applies τ and learns nothing
    before = first.state_dict()
    first.keep(batches[0][0])
    assert all(torch.equal(before["0"][k], first.state_dict()["0"][k]) for k in before["0"])


# --------------------------------------------------------------------------- ARSL's rule
def test_mean_std_tau_is_mean_plus_sample_std_of_candidates_capped():
    scores = [0.9, 0.7, 0.45, 0.3, 0.12, 0.05]
    cand = np.array([s for s in map(f32, scores) if s >= 0.1], dtype=np.float64)
    tau = cand.mean() + cand.std(ddof=1)  # 0.494 + 0.311 = 0.805: below the cap
    keep, got = mean_std_keep(torch.tensor(scores), floor=0.1, cap=0.9, topk=1)
    assert got == pytest.approx(tau, abs=1e-12)
    assert keep.tolist() == [s > tau for s in map(f32, scores)] == [True] + [False] * 5
    keep, got = mean_std_keep(torch.tensor(scores), floor=0.1, cap=0.4, topk=1)
    assert got == 0.4 and keep.tolist() == [True, True, True, False, False, False]


def test_mean_std_falls_back_to_the_best_candidates_when_none_is_above_tau():
    # two candidates: mean + sample std = 0.5 + 0.1·√2 > 0.6, so nothing passes → the best one
    keep, tau = mean_std_keep(torch.tensor([0.4, 0.6, 0.05]), floor=0.1, cap=0.9, topk=1)
    assert tau == pytest.approx(0.5 + 0.1 * math.sqrt(2), abs=1e-6) and keep.tolist() == [False, True, False]
    keep, _ = mean_std_keep(torch.tensor([0.4, 0.6, 0.05]), floor=0.1, cap=0.9, topk=0)
    assert not keep.any()
    keep, tau = mean_std_keep(torch.tensor([0.08, 0.05]), floor=0.1, cap=0.9, topk=10)
    assert tau is None and not keep.any()  # no candidate: nothing, whatever topk
    keep, tau = mean_std_keep(torch.tensor([0.7]), floor=0.1, cap=0.9, topk=1)
    assert tau == pytest.approx(0.7) and keep.tolist() == [True]  # one candidate: std 0, kept by the fallback


def test_mean_std_filter_logs_the_mean_tau_of_the_step():
    f = MeanStdThreshold(floor=0.1, cap=0.4)
    pseudo = PseudoLabels.from_detections([dets([0.9, 0.2]), dets([0.05])])
    f.observe(pseudo)
    assert f.stats == {"thr/image": 0.4}  # the second image has no candidate
    assert f(pseudo).counts == [1, 0]


# --------------------------------------------------------------------------- configuration
def test_threshold_policy_settings_are_validated():
    with pytest.raises(ValueError, match="threshold_policy"):
        PseudoLabelParams(threshold_policy="otsu")
    with pytest.raises(ValueError, match="per image"):
        PseudoLabelParams(threshold_policy="mean_std", class_score_thr={"a": 0.3})
    with pytest.raises(ValueError, match="'score' filter"):
        PseudoLabelParams(threshold_policy="gmm", filters=["class_agnostic_nms"])
    with pytest.raises(ValueError, match="above mean_std_cap"):
        PseudoLabelParams(threshold_policy="mean_std", mean_std_floor=0.5, mean_std_cap=0.4)
    with pytest.raises(ValueError, match="gmm_buffer"):
        PseudoLabelParams(gmm_buffer=3)


def test_mean_std_floor_and_cap_are_arsl_values_on_the_detector_scale_and_recorded():
    class FCOSLike:
        default_pseudo_thr = math.sqrt(0.3)

    cfg = build_config(None, {"method.name": "mean_teacher", "method.threshold_policy": "mean_std"})
    params = resolve_for_detector(cfg, FCOSLike()).method.params
    assert params["mean_std_floor"] == pytest.approx(math.sqrt(0.1))
    assert params["mean_std_cap"] == pytest.approx(math.sqrt(0.4))
    cfg = build_config(None, {"method.name": "mean_teacher", "method.threshold_policy": "mean_std",
                              "method.mean_std_floor": 0.8})
    with pytest.raises(ConfigError, match="above method.mean_std_cap"):
        resolve_for_detector(cfg, FCOSLike())  # 0.8 > √0.4
    fixed = build_config(None, {"method.name": "mean_teacher"})
    assert resolve_for_detector(fixed, FCOSLike()).method.params["mean_std_cap"] is None


# --------------------------------------------------------------------------- DDP
def _rank_observes(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        f = GMMThreshold(torch.tensor([0.5, 0.3]), CLASSES, 16, None)  # the real all-gather
        local = [[0.9, 0.8, 0.3], [0.6, 0.55, 0.2, 0.1]][rank]
        f.observe(PseudoLabels.from_detections([dets(local)]))
        torch.save(f.state_dict(), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_gmm_buffers_and_thresholds_are_the_same_on_every_rank(tmp_path):
    torch.multiprocessing.spawn(_rank_observes, args=(2, str(tmp_path / "init"), str(tmp_path / "state")), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"state.{r}") for r in (0, 1))
    assert torch.equal(r0["scores"], r1["scores"]) and torch.equal(r0["thresholds"], r1["thresholds"])
    single = gmm_filter(buffer_size=16)
    single.observe(PseudoLabels.from_detections([dets([0.9, 0.8, 0.3]), dets([0.6, 0.55, 0.2, 0.1])]))
    assert torch.equal(r0["scores"], single.scores)  # rank 0's scores first, as one process would


# --------------------------------------------------------------------------- through the trainer
def test_gmm_thresholds_are_logged_and_resume_exactly_through_the_checkpoint(tiny_config):
    from ssodkit.engine.metrics import read_metrics
    from tests.test_trainer import StopAfter, train

    overrides = dict(method__name="mean_teacher", train__unlabeled_batch_size=2, schedule__iters=5,
                     method__score_thr=0.05, method__threshold_policy="gmm", eval__interval=1000)
    straight, _ = train(tiny_config(output__name="gmm", **overrides))
    interrupted = StopAfter(tiny_config(output__name="gmm_stop", **overrides))
    try:
        first = interrupted.run()
    finally:
        interrupted.close()
    resumed, _ = train(tiny_config(output__name="gmm_stop", **overrides), resume=first.run_dir)
    a, b = straight.method.labeler.state_dict()["0"], resumed.method.labeler.state_dict()["0"]
    assert (a["scores"] > 0).any()  # the teacher's boxes reached the buffers
    assert torch.equal(a["scores"], b["scores"]) and torch.equal(a["thresholds"], b["thresholds"])
    for (name, x), y in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(x, y), name
    logged = [r for r in read_metrics(straight.run_dir / "metrics.jsonl") if r["type"] == "train"]
    classes = straight.classes
    assert {f"thr/{c}" for c in classes} <= set(logged[-1])
    resumed_log = [r for r in read_metrics(first.run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert [r[f"thr/{classes[0]}"] for r in resumed_log] == [r[f"thr/{classes[0]}"] for r in logged]
