"""D and N: the PatchGAN discriminator of pix2pix (Isola et al., CVPR 2017), n_layers = 3.

D tells G's prediction v_hat from the real frame v_{T+1}; the normalcy classifier N tells v_hat
(normal) from the pseudo-anomaly v_tilde (abnormal). Both end without a sigmoid: the least-squares
GAN losses of zxVAD (WACV 2023, eqs. 1-6) use the raw patch logits. N's attention A(.) is the
SCDA map of the last conv block's activations, which ``forward(x, return_features=True)`` returns.
"""

from __future__ import annotations

from torch import Tensor, nn

NORMS = ("batch", "instance", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels)
    return nn.Identity()


class PatchDiscriminator(nn.Module):
    """pix2pix NLayerDiscriminator: 4x4 convs, LeakyReLU(0.2), one logit per patch.

    Args:
        in_channels: channels of the input frame.
        width: channels of the first conv (ndf); later ones double up to 8 * width.
        n_layers: number of stride-2 convs after the first (3 gives the 70x70 PatchGAN).
        norm: "batch" (pix2pix's default), "instance" or "none".
    """

    def __init__(self, in_channels: int = 3, width: int = 64, n_layers: int = 3,
                 norm: str = "batch"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm '{norm}': expected one of {', '.join(NORMS)}")
        bias = norm != "batch"  # a batch norm right after makes the bias redundant
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2, inplace=True)]
        channels = width
        for n in range(1, n_layers + 1):
            out = width * min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last block keeps the resolution
            layers += [nn.Conv2d(channels, out, 4, stride=stride, padding=1, bias=bias),
                       _norm(norm, out), nn.LeakyReLU(0.2, inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, 1, 4, stride=1, padding=1)

    def forward(self, x: Tensor, return_features: bool = False):
        """Patch logits (B, 1, h, w); with ``return_features`` also the (B, d, h', w') features."""
        features = self.features(x)
        logits = self.head(features)
        return (logits, features) if return_features else logits
