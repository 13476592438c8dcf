"""Training log lines: every loss term is shown, as metrics.jsonl names it."""

from __future__ import annotations

import io

from rich.console import Console

from ssodkit.engine.progress import TrainProgress, format_losses, summarize_losses

SED_FASTER_RCNN_TERMS = {
    "sup_loss_rpn_cls": 0.02, "sup_loss_rpn_box": 0.004, "sup_loss_cls": 0.1, "sup_loss_box": 0.11,
    "unsup_distill_cls": 0.003, "unsup_distill_box": 0.001, "unsup_distill_roi_cls": 0.05,
    "unsup_distill_roi_box": 0.09, "unsup_scale_cls": 0.002, "unsup_scale_box": 0.001,
    "unsup_scale_roi_cls": 0.011, "unsup_scale_roi_box": 0.037, "loss": 0.429,
}


def test_log_line_shows_every_term_with_the_total_first():
    buffer = io.StringIO()
    progress = TrainProgress(200, 0, enabled=True, log_interval=10, console=Console(file=buffer, width=400))
    progress.update(5, SED_FASTER_RCNN_TERMS, lr=0.01)
    assert buffer.getvalue() == ""  # not a log iteration
    progress.update(10, SED_FASTER_RCNN_TERMS, lr=0.01)
    line = buffer.getvalue()
    assert line.startswith("[10/200] loss=0.429 ")
    for name, value in SED_FASTER_RCNN_TERMS.items():
        assert f"{name}={value:.3f}" in line, name


def test_live_bar_summary_sums_the_supervised_and_unsupervised_terms():
    summary = summarize_losses(SED_FASTER_RCNN_TERMS)
    assert summary == "loss=0.429 sup=0.234 unsup=0.195"
    assert summarize_losses({"loss": 1.0, "sup_loss_cls": 1.0}) == "loss=1.000 sup=1.000"
    assert format_losses({"b": 2.0, "loss": 3.0}) == "loss=3.000 b=2.000"
