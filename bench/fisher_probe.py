"""Exploration probe behind docs/benchmarks.md "Compression": does sensitivity weighting or a DCT help?

    PYTHONPATH=. .venv/bin/python bench/fisher_probe.py efficientnet-lite0 net._blocks.8

Diagonal Fisher of the tail (squared gradient of the top-1 minus top-2 logit margin) per channel,
position and DCT coefficient, over 44 calibration images that are NOT the evaluation photos
(scikit-image clock, grass, gravel, colorwheel, cell, logo, page, text, horse, microaneurysms,
checkerboard, each whole and 3 seeded crops); then quantizer variants (uniform, Fisher-weighted
steps per channel or per DCT coefficient, dead zone, per-band tables) on the 117 evaluation images,
sizes as ideal order-0 entropy. A one-off probe (kept as run), not a codec. Output as run:
bench/results/fisher_probe_lite0_blocks8.txt.
"""

# ruff: noqa
import math, sys, time
import numpy as np, torch
from PIL import Image
from bench.pretrained import load_pretrained_lite
from bench.photos import real_photos
from shared.splitting import ModelGraph

torch.set_num_threads(1)

CAL_NAMES = [
    "clock",
    "grass",
    "gravel",
    "colorwheel",
    "cell",
    "logo",
    "page",
    "text",
    "horse",
    "microaneurysms",
    "checkerboard",
]


def calibration_images(crops=3, seed=1):
    import skimage.data as d

    rng = np.random.default_rng(seed)
    out = []
    for n in CAL_NAMES:
        a = getattr(d, n)()
        if a.dtype == bool:
            a = (a * 255).astype(np.uint8)
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        a = a[..., :3]
        out.append(Image.fromarray(a))
        h, w = a.shape[:2]
        for _ in range(crops):
            s = int(min(h, w) * rng.uniform(0.5, 0.9))
            t = int(rng.integers(0, h - s + 1))
            l = int(rng.integers(0, w - s + 1))
            out.append(Image.fromarray(np.ascontiguousarray(a[t : t + s, l : l + s])))
    return out


def dct_matrix(n):
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return torch.tensor(m, dtype=torch.float32)


def entropy_bits(sym):
    _, c = np.unique(sym, return_counts=True)
    p = c / c.sum()
    return float(-(c * np.log2(p)).sum())


model, cutname = sys.argv[1], sys.argv[2]
m = load_pretrained_lite(model)
g = ModelGraph(m.module, m.input_shape)
cut = g.cut(cutname)
head, tail = g.split(cut)
prep = m.preprocessor
t0 = time.time()
with torch.no_grad():
    ev = [im for _, im in real_photos(crops_per_photo=8)]
    xb = torch.cat([prep.batch([im]) for im in ev])
    A = head(xb)[0]
    ref = m.module(xb)
cal = calibration_images()
xc = torch.cat([prep.batch([im]) for im in cal])
with torch.no_grad():
    Ac = head(xc)[0]
Ac = Ac.clone().requires_grad_(True)
out = tail(Ac)
top2 = out.topk(2, dim=1).indices
margin = (out.gather(1, top2[:, :1]) - out.gather(1, top2[:, 1:])).sum()
(grad,) = torch.autograd.grad(margin, Ac)
N, C, H, W = A.shape
D = dct_matrix(H)
dct = lambda x: torch.einsum("uh,nchw,vw->ncuv", D, x, D)
idct = lambda y: torch.einsum("uh,ncuv,vw->nchw", D, y, D)
F_sp = grad.pow(2).mean(0)  # C,H,W
F_dct = dct(grad).pow(2).mean(0)  # C,U,V
var_dct = dct(Ac.detach()).pow(2).mean(0)
print(f"{model} {cutname} N={N} cal={len(cal)} prep {time.time() - t0:.1f}s")
Fc = F_sp.mean((1, 2))
print("channel fisher max/min", float(Fc.max() / Fc.min()))
fu = F_dct.mean(0)
print("freq fisher (mean over c) diag:", [f"{float(fu[i, i] / fu[0, 0]):.3f}" for i in range(H)])
vu = var_dct.mean(0)
print("freq var diag:", [f"{float(vu[i, i] / vu[0, 0]):.3f}" for i in range(H)])
sp = F_sp.mean(0)
print("spatial fisher max/min", float(sp.max() / sp.min()))


# weighted rd: AM/GM gain
def gain(w):
    w = w.flatten().double()
    return 0.5 * math.log2(float(w.mean()) / math.exp(float(w.log().mean())))


print("AM/GM gain bits: channel", gain(Fc), "dct elem", gain(F_dct), "spatial elem", gain(F_sp))
with torch.no_grad():
    reft = tail(A)
    r1 = reft.argmax(1)


def evaluate(rec):
    with torch.no_grad():
        o = tail(rec)
    return float((o.argmax(1) == r1).float().mean())


def run(label, transform, inv, weights, steps, dz=0.5, groups=None):
    res = []
    Y = transform(A)
    rms = A.pow(2).mean((1, 2, 3)).sqrt()[:, None, None, None]
    for s in steps:
        S = s * rms * weights
        q = torch.sign(Y) * torch.floor(Y.abs() / S + 1 - dz)
        rec = inv(q * S)
        bits = 0.0
        qn = q.numpy().astype(np.int32)
        for n in range(N):
            if groups is None:
                bits += entropy_bits(qn[n].ravel())
            else:
                for gi in np.unique(groups):
                    bits += entropy_bits(qn[n][groups == gi])
        B = bits / 8 / N
        relerr = float(((rec - A).flatten(1).norm(dim=1) / A.flatten(1).norm(dim=1)).mean())
        res.append((s, B, B / (A[0].numel() * 4), relerr, evaluate(rec)))
    print(label)
    [print(f"  s={s:.3f} {B:8.0f} B {r:.3f} fp32  err {e:.3f}  top1 {a:.3f}") for s, B, r, e, a in res]


ident = lambda x: x
ones = torch.ones(C, H, W)
steps = [0.1, 0.14, 0.18, 0.22, 0.26, 0.3]
run("uniform spatial (budget-like, pooled)", ident, ident, ones, steps)
wc = (Fc / Fc.mean()).pow(-0.5)[:, None, None].expand(C, H, W)
run("channel-fisher spatial", ident, ident, wc, steps)
run("channel-fisher spatial dz0.35", ident, ident, wc, steps, dz=0.35)
wd = (F_dct / F_dct.mean()).pow(-0.5)
run("dct uniform", dct, idct, ones, steps)
run("dct full fisher", dct, idct, wd.clamp(max=20), steps)
run("dct full fisher dz0.35", dct, idct, wd.clamp(max=20), steps, dz=0.35)
# grouped entropy: by frequency radius bucket
uu = np.add.outer(np.arange(H), np.arange(W))
grp = np.broadcast_to(np.minimum(uu // 3, 6), (C, H, W))
run("dct full fisher dz0.35 grouped", dct, idct, wd.clamp(max=20), steps, dz=0.35, groups=grp)
