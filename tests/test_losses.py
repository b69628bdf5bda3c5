import torch
import torch.nn.functional as F

from asit_embed.training.losses import AAMSoftmax, accuracy, margin_at


def test_zero_margin_equals_scaled_cosine_softmax():
    torch.manual_seed(0)
    loss_fn = AAMSoftmax(8, 5, margin=0.0, scale=30.0)
    emb, y = torch.randn(16, 8), torch.randint(0, 5, (16,))
    loss, cosine = loss_fn(emb, y)
    expected = F.cross_entropy(30.0 * F.linear(F.normalize(emb), F.normalize(loss_fn.classifier.weight)), y)
    assert torch.allclose(cosine, F.linear(F.normalize(emb), F.normalize(loss_fn.classifier.weight)), atol=1e-6)
    assert torch.allclose(loss, expected, atol=1e-4)


def test_margin_raises_the_loss_and_can_be_warmed_up():
    torch.manual_seed(0)
    loss_fn = AAMSoftmax(8, 5, margin=0.0)
    emb, y = torch.randn(16, 8), torch.randint(0, 5, (16,))
    plain, _ = loss_fn(emb, y)
    loss_fn.set_margin(0.3)
    assert loss_fn.margin == 0.3
    assert loss_fn(emb, y)[0] > plain


def test_margin_schedule():
    assert margin_at(0, final=0.2, start=2, ramp=10) == 0.0
    assert abs(margin_at(7, final=0.2, start=2, ramp=10) - 0.1) < 1e-9
    assert margin_at(50, final=0.2, start=2, ramp=10) == 0.2
    assert margin_at(0, final=0.2, start=0, ramp=0) == 0.2


def test_accuracy():
    assert abs(accuracy(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), torch.tensor([0, 1, 1])) - 2 / 3) < 1e-6
