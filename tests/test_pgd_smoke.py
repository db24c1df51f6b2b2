from mmrobust import FGSM, PGD, L2Ball, LinfBall


def test_pgd_lowers_accuracy_and_respects_budget(digits, digits_cnn):
    _, _, xt, yt = digits
    clean = (digits_cnn(xt).argmax(1) == yt).float().mean().item()
    res = PGD(LinfBall(0.1, lower=0, upper=1), steps=20, seed=0)(digits_cnn, (xt, yt))
    assert res.robust.float().mean().item() < clean - 0.3
    assert float(res.size["image"].max()) <= 0.1 + 1e-6
    adv = res.batch[0]
    assert adv.min() >= 0 and adv.max() <= 1


def test_more_steps_never_weaker(digits, digits_cnn):
    _, _, xt, yt = digits
    a = FGSM(L2Ball(0.8, lower=0, upper=1))(digits_cnn, (xt, yt)).robust.float().mean()
    b = PGD(L2Ball(0.8, lower=0, upper=1), steps=20, seed=0)(digits_cnn, (xt, yt)).robust.float().mean()
    assert b <= a
