"""O: SCDA masks localise objects, CutMix boxes, batched paste equals the per-sample loop."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zxvad.models import build_backbone
from zxvad.bench.synthesis_reference import (largest_component_reference, paste_reference,
                                             synthesize_reference)
from zxvad.synthesis import (largest_component, object_masks, paste, random_boxes, scda_attention,
                             synthesize)


@pytest.fixture(scope="module")
def R():
    return build_backbone("resnet50", seed=0)


def textured_square(y, x, side, size=256, background=-0.2, seed=1):
    """A flat grey frame with a bright random-texture square; returns (frame, square mask)."""
    frame = torch.full((3, size, size), background)
    texture = torch.rand(3, side, side, generator=torch.Generator().manual_seed(seed))
    frame[:, y:y + side, x:x + side] = texture
    square = torch.zeros(size, size, dtype=torch.bool)
    square[y:y + side, x:x + side] = True
    return frame, square


def read_frames(path, count=2, every=15, size=256):
    """``count`` RGB frames, ``every`` frames apart, resized to size x size in [-1, 1]."""
    import av

    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % every == 0:
                frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1))
            if len(frames) == count:
                break
    x = torch.stack(frames).float() / 127.5 - 1
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def test_scda_attention_is_min_max_scaled():
    features = torch.randn(3, 16, 5, 7, requires_grad=True)
    attention = scda_attention(features)
    assert attention.shape == (3, 5, 7)
    torch.testing.assert_close(attention.flatten(1).min(1).values, torch.zeros(3))
    torch.testing.assert_close(attention.flatten(1).max(1).values, torch.ones(3))
    summed = features.sum(1)
    low, high = summed[0].min(), summed[0].max()
    torch.testing.assert_close(attention[0], (summed[0] - low) / (high - low))
    attention.sum().backward()
    assert features.grad is not None


def test_largest_component_keeps_the_biggest_8_connected_region():
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 2, 2] = True  # 3, joined only diagonally
    mask[0, 4:6, 3:6] = True  # 6
    mask[0, 0, 5] = True  # 1
    kept = largest_component(mask)
    expected = torch.zeros_like(mask)
    expected[0, 4:6, 3:6] = True
    assert torch.equal(kept, expected)
    diagonal = torch.zeros(1, 4, 4, dtype=torch.bool)
    diagonal[0, [0, 1, 2, 3], [0, 1, 2, 3]] = True
    assert torch.equal(largest_component(diagonal), diagonal)
    assert not largest_component(torch.zeros(2, 3, 3, dtype=torch.bool)).any()


def test_largest_component_equals_scipy_labelling():
    maps = torch.rand(40, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.55
    batched = largest_component(maps)
    for single, kept in zip(maps, batched):
        assert np.array_equal(kept.numpy(), largest_component_reference(single.numpy()))


def test_mask_finds_a_textured_square(R):
    for y, x in [(32, 160), (160, 128)]:  # squares on R's 8x8 grid (32-pixel cells)
        frame, square = textured_square(y, x, 96)
        mask = object_masks(R, frame[None])[0, 0].bool()
        iou = (mask & square).sum() / (mask | square).sum()
        assert iou > 0.6, f"square at {(y, x)}: IoU {iou:.2f}"


def test_mask_covers_a_minority_of_real_frames(R, real_clips):
    names = ["street_pedestrians_vtest.avi", "tree_window.avi", "carphone.mp4", "street_bikes.mp4"]
    frames = torch.cat([read_frames(real_clips / name) for name in names])
    areas = object_masks(R, frames).mean(dim=(1, 2, 3))
    assert areas.min() > 0
    assert areas.mean() < 0.35, f"mask areas {areas.tolist()}"
    # the naive rule (A / max(A) > 0.1) marks nearly every position: why the cut is different
    summed = R(frames).sum(dim=1)
    naive = summed / summed.flatten(1).max(dim=1).values[:, None, None] > 0.1
    assert naive.float().mean() > 0.9


def test_random_boxes_are_cutmix_boxes_inside_the_frame():
    boxes = random_boxes(2000, 48, 80, torch.Generator().manual_seed(0))
    assert boxes.dtype == torch.long and boxes.shape == (2000, 4)
    y0, x0, y1, x1 = boxes.unbind(1)
    assert (y0 >= 0).all() and (x0 >= 0).all() and (y1 <= 48).all() and (x1 <= 80).all()
    assert (y1 > y0).all() and (x1 > x0).all()
    area = ((y1 - y0) * (x1 - x0)).float() / (48 * 80)
    assert 0.2 < area.mean() < 0.5  # E[1 - beta] = 0.5 before the corners are clipped
    assert area.max() > 0.8 and area.min() < 0.01
    again = random_boxes(2000, 48, 80, torch.Generator().manual_seed(0))
    assert torch.equal(boxes, again)


def blob_masks(batch, size, seed):
    """Random 0/1 masks made of a few upsampled blobs, like R's upsampled maps."""
    coarse = torch.rand(batch, 1, 4, 4, generator=torch.Generator().manual_seed(seed)) > 0.6
    return F.interpolate(coarse.float(), size=(size, size), mode="nearest")


def test_paste_replaces_only_mask_pixels_inside_the_box():
    g = torch.Generator().manual_seed(0)
    targets = torch.rand(16, 3, 64, 64, generator=g) * 2 - 1
    donors = torch.rand(16, 3, 64, 64, generator=g) * 2 - 1
    masks = blob_masks(16, 64, seed=1)
    boxes = random_boxes(16, 64, 64, g)
    frames, truth = paste(targets, donors, masks, boxes)
    assert truth.shape == (16, 1, 64, 64) and set(truth.unique().tolist()) <= {0.0, 1.0}
    changed = (frames != targets).any(dim=1, keepdim=True)
    assert not (changed & (truth == 0)).any()  # pasted pixels lie inside M~
    outside = truth.expand_as(frames) == 0
    assert torch.equal(frames[outside], targets[outside])  # the rest is the target, exactly
    for b, (y0, x0, y1, x1) in enumerate(boxes.tolist()):
        in_box = torch.zeros(64, 64, dtype=torch.bool)
        in_box[y0:y1, x0:x1] = True
        assert not truth[b, 0][~in_box].any()  # M~ lies inside the box
        frame, expected = paste_reference(targets[b], donors[b], masks[b], boxes[b])
        assert torch.equal(truth[b], expected)
        assert torch.equal(frames[b], frame)
    assert truth.sum() > 0


def test_paste_into_the_whole_frame_copies_the_donor():
    targets, donors = torch.zeros(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    whole = torch.tensor([[0, 0, 32, 32]] * 2)
    frames, truth = paste(targets, donors, torch.ones(2, 1, 32, 32), whole)
    assert torch.equal(frames, donors)
    assert truth.min() == 1


@pytest.mark.parametrize("size", [64, 96])
def test_batched_synthesis_equals_the_per_sample_loop(R, size):
    g = torch.Generator().manual_seed(size)
    clips = torch.rand(6, 5, 3, size, size, generator=g) * 2 - 1
    donors = torch.full((6, 3, size, size), -0.3)
    for b in range(6):  # one textured patch per donor, at different places
        y, x = (17 * b) % (size // 2), (29 * b) % (size // 2)
        side = size // 3
        donors[b, :, y:y + side, x:x + side] = torch.rand(3, side, side, generator=g)
    fast = synthesize(clips, donors, R, generator=torch.Generator().manual_seed(7))
    slow = synthesize_reference(clips, donors, R, generator=torch.Generator().manual_seed(7))
    assert torch.equal(fast.boxes, slow.boxes) and torch.equal(fast.frame_index, slow.frame_index)
    assert torch.equal(fast.object_mask, slow.object_mask)
    assert torch.equal(fast.mask, slow.mask)
    assert torch.equal(fast.frames, slow.frames)
    assert fast.mask_area == pytest.approx(slow.mask_area)
    assert 0 < fast.mask_area < 0.5 and fast.mask.sum() > 0


def test_synthesis_pastes_on_an_input_frame_never_the_target(R):
    clips = torch.rand(16, 5, 3, 64, 64) * 2 - 1
    donors = torch.rand(16, 3, 64, 64) * 2 - 1
    out = synthesize(clips, donors, R, generator=torch.Generator().manual_seed(0))
    assert out.frame_index.max() == 3 and out.frame_index.min() == 0  # t in v_1..v_T, T = 4
    chosen = clips[torch.arange(16), out.frame_index]
    outside = out.mask.expand_as(chosen) == 0
    assert torch.equal(out.frames[outside], chosen[outside])
    inputs_only = synthesize(clips[:, :4], donors, R, T=4,
                             generator=torch.Generator().manual_seed(0))
    assert torch.equal(inputs_only.frame_index, out.frame_index)


def test_synthesis_rejects_bad_clips(R):
    expected = r"clips of shape \(2, 3, 32, 32\): expected \(B, T\+1, 3, H, W\)"
    with pytest.raises(ValueError, match=expected):
        synthesize(torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 32, 32), R)
    with pytest.raises(ValueError, match="T=6: expected 1..5"):
        synthesize(torch.zeros(2, 5, 3, 32, 32), torch.zeros(2, 3, 32, 32), R, T=6)


@pytest.mark.gpu
def test_synthesis_stays_on_the_gpu(R):
    device = torch.device("cuda")
    RG = build_backbone("resnet50").to(device)
    clips = torch.rand(4, 5, 3, 64, 64, device=device) * 2 - 1
    donors = torch.rand(4, 3, 64, 64, device=device) * 2 - 1
    out = synthesize(clips, donors, RG, generator=torch.Generator(device=device).manual_seed(0))
    for tensor in (out.frames, out.mask, out.object_mask, out.boxes, out.frame_index):
        assert tensor.device.type == "cuda"
    cpu = synthesize_reference(clips.cpu(), donors.cpu(), R,
                               generator=torch.Generator(device=device).manual_seed(0))
    assert torch.equal(out.boxes.cpu(), cpu.boxes.cpu())


def test_paste_accepts_donors_of_another_size():
    g = torch.Generator().manual_seed(3)
    targets, donors = torch.rand(4, 3, 64, 64, generator=g), torch.rand(4, 3, 48, 40, generator=g)
    masks = F.interpolate(blob_masks(4, 8, seed=4), size=(48, 40), mode="nearest")
    boxes = random_boxes(4, 64, 64, g)
    frames, truth = paste(targets, donors, masks, boxes)
    for b in range(4):
        frame, expected = paste_reference(targets[b], donors[b], masks[b], boxes[b])
        assert torch.equal(frames[b], frame) and torch.equal(truth[b], expected)
