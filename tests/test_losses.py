"""Every loss against values computed by hand (probabilities chosen, logits = their logs)."""

from __future__ import annotations

import math

import pytest
import torch

from medseg.losses import LOSS_NAMES, create_loss


def logits_from_probs(probs: list[list[float]]) -> torch.Tensor:
    """``probs[c][i]`` for class c, pixel i → logits (1, C, N) whose softmax is exactly probs."""
    return torch.log(torch.tensor(probs, dtype=torch.float64)).float()[None]


# one pixel of class 1 predicted at 0.8
ONE_PIXEL = logits_from_probs([[0.2], [0.8]])
ONE_TARGET = torch.tensor([[1]])

# class-imbalanced: 9 background pixels at p(bg) = 0.9, one foreground pixel at p(fg) = 0.3
IMB = logits_from_probs([[0.9] * 9 + [0.7], [0.1] * 9 + [0.3]])
IMB_TARGET = torch.tensor([[0] * 9 + [1]])
L09, L03 = -math.log(0.9), -math.log(0.3)


def test_cross_entropy_of_a_confident_pixel_is_0_223_nats():
    assert create_loss("ce")(ONE_PIXEL, ONE_TARGET).item() == pytest.approx(-math.log(0.8), abs=1e-6)
    assert -math.log(0.8) == pytest.approx(0.2231, abs=1e-4)


def test_focal_loss_of_a_confident_pixel_is_near_zero():
    value = create_loss("focal", gamma=2.0)(ONE_PIXEL, ONE_TARGET).item()
    assert value == pytest.approx(0.2**2 * -math.log(0.8), abs=1e-6)  # 0.0089
    assert value == pytest.approx(0.0089, abs=1e-4)
    # gamma 0 is cross-entropy
    assert create_loss("focal", gamma=0.0)(ONE_PIXEL, ONE_TARGET).item() == pytest.approx(-math.log(0.8), abs=1e-6)


def test_target_with_channel_axis_is_accepted():
    assert create_loss("ce")(ONE_PIXEL, ONE_TARGET[:, None]).item() == pytest.approx(-math.log(0.8), abs=1e-6)


def test_cross_entropy_class_imbalanced_plain_and_weighted():
    assert create_loss("ce")(IMB, IMB_TARGET).item() == pytest.approx((9 * L09 + L03) / 10, abs=1e-6)  # 0.2152
    # weights [1, 9]: sum(w_y * nll) / sum(w_y) = (9·1·L09 + 9·L03) / (9 + 9)
    weighted = create_loss("ce", class_weights=[1.0, 9.0])(IMB, IMB_TARGET).item()
    assert weighted == pytest.approx((9 * L09 + 9 * L03) / 18, abs=1e-6)  # 0.6547


def test_focal_class_imbalanced_plain_and_alpha():
    fl = create_loss("focal", gamma=2.0)(IMB, IMB_TARGET).item()
    assert fl == pytest.approx((9 * 0.1**2 * L09 + 0.7**2 * L03) / 10, abs=1e-6)  # 0.0599
    # the easy majority is down-weighted: background contributes ~1.6 % of the focal loss vs 44 % of CE
    assert 9 * 0.1**2 * L09 / 10 / fl < 0.02
    fla = create_loss("focal", gamma=2.0, class_weights=[0.25, 0.75])(IMB, IMB_TARGET).item()
    assert fla == pytest.approx((9 * 0.25 * 0.1**2 * L09 + 0.75 * 0.7**2 * L03) / 10, abs=1e-6)  # 0.0445
    # without background only the foreground pixel counts (still averaged over all 10 pixels)
    nobg = create_loss("focal", gamma=2.0, include_background=False)(IMB, IMB_TARGET).item()
    assert nobg == pytest.approx(0.7**2 * L03 / 10, abs=1e-6)


def test_soft_dice_by_hand():
    # foreground: 2·0.3 / (9·0.1 + 0.3 + 1) = 0.6 / 2.2; background: 2·8.1 / (8.8 + 9) = 16.2 / 17.8
    fg_loss, bg_loss = 1 - 0.6 / 2.2, 1 - 16.2 / 17.8
    with_bg = create_loss("dice", smooth=0.0)(IMB, IMB_TARGET).item()
    assert with_bg == pytest.approx((fg_loss + bg_loss) / 2, abs=1e-5)
    no_bg = create_loss("dice", smooth=0.0, include_background=False)(IMB, IMB_TARGET).item()
    assert no_bg == pytest.approx(fg_loss, abs=1e-5)  # 0.7273
    smooth1 = create_loss("dice", smooth=1.0, include_background=False)(IMB, IMB_TARGET).item()
    assert smooth1 == pytest.approx(1 - (0.6 + 1) / (2.2 + 1), abs=1e-5)  # 0.5


def test_soft_dice_per_sample_vs_per_batch():
    # sample A: the imbalanced case; sample B: no foreground at all, p(fg) = 0.1 everywhere
    logits = torch.cat([IMB, logits_from_probs([[0.9] * 10, [0.1] * 10])])
    target = torch.cat([IMB_TARGET, torch.zeros(1, 10, dtype=torch.long)])
    s = 1e-5
    per_sample = create_loss("dice", smooth=s, include_background=False)(logits, target).item()
    a = 1 - (0.6 + s) / (2.2 + s)
    b = 1 - s / (1.0 + s)  # empty reference: Dice ≈ 0, loss ≈ 1
    assert per_sample == pytest.approx((a + b) / 2, abs=1e-5)  # 0.8636
    per_batch = create_loss("dice", smooth=s, include_background=False, batch=True)(logits, target).item()
    assert per_batch == pytest.approx(1 - (0.6 + s) / (2.2 + 1.0 + s), abs=1e-5)  # 0.6 / 3.2 → 0.8125


def test_combined_losses_are_weighted_sums():
    dice = 1 - 0.6 / 2.2
    focal = (9 * 0.1**2 * L09 + 0.7**2 * L03) / 10
    ce = (9 * L09 + L03) / 10
    df = create_loss("dice_focal", smooth=0.0, include_background=False, gamma=2.0,
                     lambda_dice=1.0, lambda_focal=2.0)(IMB, IMB_TARGET).item()
    assert df == pytest.approx(dice + 2.0 * focal, abs=1e-5)
    dc = create_loss("dice_ce", smooth=0.0, include_background=False, lambda_dice=0.5, lambda_ce=1.0)(IMB, IMB_TARGET).item()
    assert dc == pytest.approx(0.5 * dice + ce, abs=1e-5)


def test_losses_work_in_3d_and_backpropagate():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 6, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 4, 5, 6))
    for name in LOSS_NAMES:
        loss = create_loss(name)(logits, target)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        assert logits.grad is not None and torch.isfinite(logits.grad).all()
        logits.grad = None


def test_perfect_prediction_scores_near_zero():
    target = torch.tensor([[0, 1, 1, 0]])
    logits = torch.nn.functional.one_hot(target, 2).permute(0, 2, 1).float() * 50.0
    for name in LOSS_NAMES:
        assert create_loss(name)(logits, target).item() < 1e-4, name


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown loss 'dice_fcoal'; did you mean 'dice_focal'"):
        create_loss("dice_fcoal")
    with pytest.raises(ValueError, match="unknown option 'gama' for loss 'focal'; did you mean 'gamma'"):
        create_loss("focal", gama=2)
    with pytest.raises(ValueError, match="class_weights has 3 values but the logits have 2 classes"):
        create_loss("ce", class_weights=[1, 2, 3])(ONE_PIXEL, ONE_TARGET)
    with pytest.raises(ValueError, match="does not match logits"):
        create_loss("dice")(ONE_PIXEL, torch.tensor([[1, 0]]))
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        create_loss("focal", gamma=-1)
