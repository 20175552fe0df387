import pytest
import torch

from interlingua.fused_head import head_nll


def reference_nll(hidden, weight, targets, softcap):
    logits = hidden @ weight.T
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return -logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("chunk_rows", [7, 64, 1000])
def test_loss_and_gradient_match_the_plain_log_softmax(softcap, chunk_rows):
    torch.manual_seed(0)
    weight = torch.randn(300, 16) * 2   # large logits: the online softmax must rescale correctly
    targets = torch.tensor([0, 5, 299, 17, 17])
    hidden = torch.randn(5, 16, requires_grad=True)
    upstream = torch.rand(5)
    fused = head_nll(hidden, weight, targets, softcap, chunk_rows)
    (fused_grad,) = torch.autograd.grad((fused * upstream).sum(), hidden)
    reference = reference_nll(hidden, weight, targets, softcap)
    (reference_grad,) = torch.autograd.grad((reference * upstream).sum(), hidden)
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_grad, reference_grad, atol=1e-5, rtol=1e-5)


def test_no_gradient_work_without_grad_and_refuses_a_trainable_head():
    weight = torch.randn(50, 8)
    with torch.inference_mode():
        out = head_nll(torch.randn(3, 8), weight, torch.tensor([1, 2, 3]))
    assert out.shape == (3,) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="frozen head"):
        head_nll(torch.randn(3, 8), weight.requires_grad_(), torch.tensor([1, 2, 3]))
