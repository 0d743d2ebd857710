"""Panoptic quality and object-level scores, computed by ``panoptica`` itself.

The 2026 scorer calls ``Panoptica_Evaluator`` with a semantic (binary) input,
``ConnectedComponentsInstanceApproximator`` (cc3d, 26-connectivity in 3D),
``NaiveThresholdMatching`` and the instance metric DSC, and reports ``pq_dsc``. We call the
same evaluator, on a crop of both masks: the bounding box of their union grown by one zero
voxel. That crop is exact, not an approximation: connected components, the IoU matching, every
instance's DSC and the global binary DSC only depend on the foreground voxels, which the crop
keeps (the tests compare with panoptica on the whole arrays). It is faster because panoptica
labels, relabels and scans the whole array several times.

The object-level extras of the 2024 and 2025 editions (:func:`instance_metrics`) use a
vectorized matcher instead of panoptica's evaluator (same rules, checked against it).
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

from .metrics import bounding_box, crop_with_margin


@lru_cache(maxsize=None)
def _evaluator(matching_threshold: float):
    import panoptica
    from panoptica import (ConnectedComponentsInstanceApproximator, InputType, NaiveThresholdMatching,
                           Panoptica_Evaluator)
    from panoptica.metrics import Metric

    panoptica.disable_citation_reminder()  # it prints a banner to stdout on first use otherwise
    return Panoptica_Evaluator(
        expected_input=InputType.SEMANTIC,
        instance_approximator=ConnectedComponentsInstanceApproximator(cca_backend=None),
        instance_matcher=NaiveThresholdMatching(matching_threshold=matching_threshold),
        instance_metrics=[Metric.DSC],
    )


#: Crop only when the box is at most this fraction of the volume; above, the copy costs more
#: than the scans it saves (objects spread over the whole volume).
_CROP_FRACTION = 0.5


def union_crop(gt: np.ndarray, pred: np.ndarray, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to their union's bounding box plus ``margin`` zero voxels.

    Returns the arrays unchanged when both are empty (panoptica's empty-case rules then see
    the original shapes) or when the box would hold most of the volume anyway.
    """
    box = bounding_box(gt | pred, margin=margin)
    if box is None or np.prod([s.stop - s.start for s in box]) > _CROP_FRACTION * gt.size:
        return gt, pred
    return crop_with_margin(gt, box), crop_with_margin(pred, box)


def panoptica_result(gt: np.ndarray, pred: np.ndarray, matching_threshold: float = 0.3, crop: bool = True):
    """panoptica's ``PanopticaResult`` for binary masks (bool, (z, y, x)), as the 2026 scorer makes it.

    Masks go in as uint8 0/1, which is what the scorer passes (SimpleITK arrays set to 1 where > 0).
    """
    if crop:
        gt, pred = union_crop(gt, pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _evaluator(float(matching_threshold)).evaluate(
            pred.astype(np.uint8), gt.astype(np.uint8), verbose=False)["ungrouped"]


def instance_scores(result, matching_threshold: float) -> dict:
    """Object-level scores from a panoptica result: what a lab counting cells reads.

    ``precision`` = matched / predicted objects, ``recall`` = matched / true objects, ``f1`` =
    panoptica's recognition quality, ``pq`` = its ``pq_dsc``. A ratio with nothing to count
    (no predicted object for precision...) is None, where panoptica would raise
    ZeroDivisionError; PQ is NaN when neither mask has an object, as panoptica gives it.
    """
    tp, fp, fn = int(result.tp), int(result.fp), int(result.fn)
    return {
        "iou_threshold": float(matching_threshold),
        "true_objects": int(result.n_ref_instances),
        "predicted_objects": int(result.n_pred_instances),
        "matched_objects": tp,
        "false_positive_objects": fp,
        "missed_objects": fn,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "f1": float(result.rq),
        "pq": float(result.pq_dsc),
    }


def instance_metrics(gt: np.ndarray, pred: np.ndarray, matching_threshold: float = 0.5) -> dict:
    """:func:`instance_scores` of ``gt`` vs ``pred`` without panoptica's per-instance loop.

    Objects are 26-connected components (cc3d, as panoptica's approximator); every overlapping
    (true, predicted) pair gets its IoU from one table of intersection counts; pairs are
    matched greedily by decreasing IoU, one-to-one, when IoU ≥ ``matching_threshold`` (what
    ``NaiveThresholdMatching`` does); PQ = mean DSC of the matched pairs × F1. Written by hand
    because panoptica's evaluator costs ~20× the rest of a spot-like case (3.4 s vs 0.17 s on a
    dense 200³ pair); the tests check the counts exactly and PQ to 1e-12 against panoptica.
    With thresholds ≥ 0.5 the matching is unique except for exact ties at 0.5.
    """
    import cc3d

    gt_labels, n_true = cc3d.connected_components(gt, connectivity=26, return_N=True)
    pred_labels, n_pred = cc3d.connected_components(pred, connectivity=26, return_N=True)
    n_true, n_pred = int(n_true), int(n_pred)
    both = (gt_labels > 0) & (pred_labels > 0)
    # encode (pred, true) as panoptica does, so that equal IoUs keep its order
    codes, intersections = np.unique(pred_labels[both].astype(np.int64) * (n_true + 1) + gt_labels[both],
                                     return_counts=True)
    true_ids, pred_ids = codes % (n_true + 1), codes // (n_true + 1)
    true_area = np.bincount(gt_labels.ravel(), minlength=n_true + 1).astype(np.float64)
    pred_area = np.bincount(pred_labels.ravel(), minlength=n_pred + 1).astype(np.float64)
    inter = intersections.astype(np.float64)
    iou = inter / (true_area[true_ids] + pred_area[pred_ids] - inter)
    used_true, used_pred, dscs = set(), set(), []
    for k in np.argsort(-iou, kind="stable"):
        if iou[k] < matching_threshold:
            break
        t, p = int(true_ids[k]), int(pred_ids[k])
        if t in used_true or p in used_pred:
            continue
        used_true.add(t)
        used_pred.add(p)
        dscs.append(2.0 * inter[k] / (true_area[t] + pred_area[p]))
    tp = len(dscs)
    fp, fn = n_pred - tp, n_true - tp
    if tp:
        f1 = tp / (tp + 0.5 * fp + 0.5 * fn)
        pq = float(np.mean(dscs)) * f1
    else:
        f1 = pq = 0.0 if n_true + n_pred else float("nan")
    return {
        "iou_threshold": float(matching_threshold),
        "true_objects": n_true,
        "predicted_objects": n_pred,
        "matched_objects": tp,
        "false_positive_objects": fp,
        "missed_objects": fn,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "f1": float(f1),
        "pq": float(pq),
    }
