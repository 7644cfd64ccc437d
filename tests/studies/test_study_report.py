"""The LM plot keeps the final whole-split score apart from the validation-subset curve."""

from mossnet.studies.report import _intermediate


def _run(curve, val_loss):
    return {"val_curve": curve, "val_loss": val_loss}


def test_final_whole_split_point_is_not_part_of_the_curve():
    curve = [[100, 5.0], [200, 4.6], [210, 4.4]]
    assert _intermediate(_run(curve, 4.4)) == [[100, 5.0], [200, 4.6]]


def test_curve_is_kept_whole_when_its_last_point_is_not_the_final_score():
    curve = [[100, 5.0], [200, 4.6]]
    assert _intermediate(_run(curve, 4.3)) == curve
    assert _intermediate(_run(curve, None)) == curve
    assert _intermediate(_run([[100, 5.0]], 5.0)) == [[100, 5.0]]  # a lone point stays
