"""Activation checkpointing (`PDFNetConfig.grad_checkpoint`): same loss and gradients, same weights,
far fewer activations kept for backward."""

import pytest
import torch

from pdfnet_pipeline.model import PDFNetConfig, build_pdfnet, set_grad_checkpoint
from pdfnet_pipeline.model.blocks import SDPAttention


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    image = torch.randn(1, 3, 256, 256)
    depth = torch.rand(1, 1, 256, 256) * 5 + 1
    mask = (torch.rand(1, 1, 256, 256) > 0.5).float()
    return image, depth, mask


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_pdfnet(PDFNetConfig(preset="tiny", drop_path=0.1)).train()  # dropout + drop-path on


def _step(model, batch, checkpointing, seed=123):
    set_grad_checkpoint(model, checkpointing)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(*batch, depth_target=batch[1])
    out.losses["total"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    set_grad_checkpoint(model, False)
    return {k: v.detach() for k, v in out.losses.items()}, grads


@pytest.mark.slow
@pytest.mark.parametrize("chunked", [False, True])
def test_checkpointed_step_gives_the_same_loss_and_gradients(model, batch, chunked, monkeypatch):
    """CPU float32, dropout (CoA) and drop-path (Swin) active: non-reentrant checkpointing restores
    the RNG state when it reruns a block, so the masks are redrawn identically. Asserted to
    rtol 1e-6 / atol 1e-9 (a reordered float32 sum would stay inside); on this machine every
    loss term and all gradients came out bit-identical. `chunked`: the CPU dropout attention
    runs in query chunks (one checkpoint each, nested in the FSE's), as at 1024² with the
    reference preset; the tiny model's matrices need a smaller chunk to get there."""
    if chunked:
        monkeypatch.setattr(SDPAttention, "CHUNK_ELEMS", 2**16)  # finest tiny IP: 1024 x 1024 -> 16 chunks
    plain_losses, plain_grads = _step(model, batch, checkpointing=False)
    ck_losses, ck_grads = _step(model, batch, checkpointing=True)
    assert ck_losses.keys() == plain_losses.keys()
    for k in plain_losses:
        torch.testing.assert_close(ck_losses[k], plain_losses[k], rtol=1e-6, atol=1e-9)
    assert ck_grads.keys() == plain_grads.keys() and len(plain_grads) > 300
    for name, g in plain_grads.items():
        torch.testing.assert_close(ck_grads[name], g, rtol=1e-6, atol=1e-9, msg=name)
    # the comparison is not vacuous: another dropout / drop-path draw changes loss and gradients
    other_losses, other_grads = _step(model, batch, checkpointing=False, seed=7)
    assert abs(other_losses["total"].item() - plain_losses["total"].item()) > 1e-4
    assert not torch.allclose(
        other_grads["decoder.FSE_mix.3.IP.Att.in_proj_weight"], plain_grads["decoder.FSE_mix.3.IP.Att.in_proj_weight"]
    )


def test_checkpointing_keeps_only_block_inputs_for_backward(model, batch):
    """Bytes saved for backward outside checkpointed blocks (tensors a block keeps internally are
    not saved at all; its inputs are held by the checkpoint): under a third with it on."""

    def saved_bytes(checkpointing):
        set_grad_checkpoint(model, checkpointing)
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(*batch)
        set_grad_checkpoint(model, False)
        return sum(storages.values())

    plain, ck = saved_bytes(False), saved_bytes(True)
    assert ck < plain / 3, (ck, plain)


def test_checkpointing_changes_no_weights_and_no_inference():
    torch.manual_seed(0)
    plain = build_pdfnet(PDFNetConfig(preset="tiny"))
    torch.manual_seed(0)
    ck = build_pdfnet(PDFNetConfig(preset="tiny", grad_checkpoint=True))
    a, b = plain.state_dict(), ck.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert ck.encoder.grad_checkpoint and ck.decoder.grad_checkpoint and ck.depth_decoder.grad_checkpoint
    image, depth = torch.randn(1, 3, 256, 256), torch.rand(1, 1, 256, 256)
    with torch.no_grad():
        assert torch.equal(plain.eval().predict(image, depth), ck.eval().predict(image, depth))


def test_cpu_dropout_attention_in_query_chunks_equals_one_pass(monkeypatch):
    """Chunking the queries changes only the dropout draws: with the dropout made deterministic
    (p kept, noise off) outputs and gradients equal one unchunked pass, with and without a
    checkpoint per chunk. Float32; the key/value gradients are sums over chunks in another
    order, so gradients are compared to 2e-6 of their largest entry (measured 2.3e-7)."""
    from pdfnet_pipeline.model import blocks

    real = blocks._sdpa
    monkeypatch.setattr(blocks, "_sdpa", lambda q, k, v, p: real(q, k, v, 0.0))
    torch.manual_seed(0)
    att = SDPAttention(16, dropout=0.1).train()
    q, kv = torch.randn(2, 300, 16, requires_grad=True), torch.randn(2, 200, 16, requires_grad=True)

    def run(chunk_elems, checkpointing):
        monkeypatch.setattr(SDPAttention, "CHUNK_ELEMS", chunk_elems)
        att.grad_checkpoint = checkpointing
        att.zero_grad(set_to_none=True)
        q.grad = kv.grad = None
        out = att(q, kv)
        (out * torch.linspace(-1, 1, 16)).sum().backward()
        return out.detach(), [t.grad.clone() for t in (q, kv, att.in_proj_weight, att.out_proj.weight)]

    whole = run(10**9, False)
    for checkpointing in (False, True):
        parts = run(64 * 200, checkpointing)  # 64 query rows per chunk: 5 chunks, the last of 44
        torch.testing.assert_close(parts[0], whole[0], rtol=1e-6, atol=1e-7)
        for a, b in zip(parts[1], whole[1]):
            torch.testing.assert_close(a, b, rtol=0, atol=2e-6 * b.abs().max().item())
