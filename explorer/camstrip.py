"""The Grad-CAM strip: the four stages' maps drawn in the browser, for any class, opacity and scale.

The server sends one image's analysis once (``payload``): the 32x32 pixels the network saw and
the maps of all ten classes at their stage resolution (~40 KB). The page then draws each
stage's overlay on a canvas with the same steps as ``insight.render.overlay`` (nearest-neighbour
image, bilinear map with PyTorch's ``align_corners=False`` rule, the same jet colour map and
blend), so a change of class, opacity or colour scale is redrawn on the spot, without a round
trip: the controls' events run only ``VIEW_JS`` in the browser.

The server keeps drawing the same overlays as image files for the API (``/analyze``, ``/gradcam``).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from resnet import CLASSES, STAGE_NAMES

from .cache import Entry

ELEM_ID = "gradcam-strip"
EVENT = "gradcam-view"  # the browser event VIEW_JS sends to the strip


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def payload(entry: Entry, view: dict[str, Any], display: int, strides: dict[str, int]) -> dict[str, Any]:
    """What the strip needs to draw ``entry`` for any view: every class's maps must be computed.

    Each map is sent as uint16 fractions of its own maximum (little-endian, base64): 2 bytes a
    value, and an error of at most 1/131070 of the maximum, far below one colour step (1/255).
    """
    if len(entry.cams) < len(CLASSES):
        raise ValueError("the strip needs the maps of every class (AnalysisCache.every_class)")
    maps = []
    for c in range(len(CLASSES)):
        stages = []
        for name in STAGE_NAMES:
            m = np.asarray(entry.cams[c][name], dtype=np.float32)
            top = float(m.max())
            q = np.zeros(m.shape, "<u2") if top <= 0 else np.rint(np.clip(m / top, 0, 1) * 65535).astype("<u2")
            stages.append({"max": top, "q": _b64(q)})
        maps.append(stages)
    h, w = entry.seen.shape[:2]
    first = entry.cams[0]
    return {
        "key": entry.key,
        "classes": list(CLASSES),
        "predicted": entry.predicted,
        "probs": [round(float(p), 6) for p in entry.probs],
        "seen": _b64(entry.seen.astype(np.uint8)),
        "side": [int(h), int(w)],
        "display": int(display),
        "stages": [{"name": n, "h": int(first[n].shape[0]), "w": int(first[n].shape[1]), "stride": int(strides[n])}
                   for n in STAGE_NAMES],
        "maps": maps,
        "view": view,
    }


def decode(data: dict[str, Any]) -> dict[int, dict[str, np.ndarray]]:
    """The maps of a payload back as arrays (what the browser reads): class -> stage -> (h, w)."""
    out = {}
    for c, stages in enumerate(data["maps"]):
        out[c] = {}
        for info, sent in zip(data["stages"], stages):
            q = np.frombuffer(base64.b64decode(sent["q"]), "<u2").reshape(info["h"], info["w"])
            out[c][info["name"]] = q.astype(np.float32) / 65535 * np.float32(sent["max"])
    return out


# Sent by the class, opacity and colour-scale controls: the strip redraws itself (no server).
VIEW_JS = f"""(target, opacity, scale) => {{
  document.dispatchEvent(new CustomEvent('{EVENT}', {{detail: {{target, opacity, scale}}}}));
}}"""

HTML = '<div class="camstrip"><div class="cells"></div><p class="camnote"></p></div>'

CSS = """
.camstrip .cells { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 8px; }
.camstrip figure { margin: 0; text-align: center; }
.camstrip canvas { width: 100%; max-width: 256px; aspect-ratio: 1; image-rendering: auto; border-radius: 4px; }
.camstrip figcaption { font-size: 0.85em; opacity: 0.8; }
.camstrip .camnote { margin-top: 6px; }
@media (max-width: 640px) { .camstrip .cells { grid-template-columns: repeat(2, minmax(0, 1fr)); } }
"""

# Runs once when the strip is mounted. ``props.value`` is the payload (or null); ``watch`` redraws
# when the server sends a new one; the controls' VIEW_JS sends a new view. After each drawing the
# root carries data-view ("class|opacity|scale") and data-draws (a counter), for tests and the bench.
JS = f"""
const root = element.querySelector('.camstrip') || element;
let decoded = null, draws = 0;

function bytes(b64) {{
  const s = atob(b64), out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}}
function decode(p) {{
  const maps = p.maps.map(stages => stages.map((m, i) => {{
    const q = new Uint16Array(bytes(m.q).buffer), v = new Float32Array(q.length);
    for (let k = 0; k < q.length; k++) v[k] = q[k] / 65535 * m.max;
    return {{h: p.stages[i].h, w: p.stages[i].w, max: m.max, v}};
  }}));
  return {{key: p.key, seen: bytes(p.seen), maps}};
}}
function g2(x) {{  // Python's format(x, ".2g")
  if (x === 0) return '0';
  const e = Math.floor(Math.log10(Math.abs(x)));
  if (e < -4 || e >= 2) {{
    const [m, p] = x.toExponential(1).split('e');
    const n = parseInt(p, 10);
    return m.replace(/\\.0$/, '') + 'e' + (n < 0 ? '-' : '+') + String(Math.abs(n)).padStart(2, '0');
  }}
  return String(parseFloat(x.toPrecision(2)));
}}
// Bilinear weights of PyTorch's interpolate(align_corners=False) from n cells to size pixels.
function axis(n, size) {{
  const i0 = new Int32Array(size), i1 = new Int32Array(size), f = new Float32Array(size);
  for (let d = 0; d < size; d++) {{
    let s = (d + 0.5) * n / size - 0.5;
    if (s < 0) s = 0;
    const a = Math.floor(s);
    i0[d] = a; i1[d] = a < n - 1 ? a + 1 : a; f[d] = s - a;
  }}
  return [i0, i1, f];
}}
function jet(u, c) {{ const x = Math.min(Math.max(1.5 - Math.abs(4 * u - c), 0), 1); return Math.floor(x * 255 + 0.5); }}

function cells(n) {{
  const box = root.querySelector('.cells');
  if (box.children.length !== n) {{
    box.innerHTML = '';
    for (let i = 0; i < n; i++) {{
      const fig = document.createElement('figure');
      fig.innerHTML = '<canvas role="img"></canvas><figcaption></figcaption>';
      box.appendChild(fig);
    }}
  }}
  return [...box.children];
}}

function draw() {{
  const p = props.value;
  const note = root.querySelector('.camnote');
  if (!p || !p.maps) {{ cells(0); note.textContent = ''; root.dataset.view = ''; return; }}
  if (!decoded || decoded.key !== p.key) decoded = decode(p);
  const v = window.__gradcamView || p.view;  // the controls' latest values, once they have moved
  const t = v.target === 'predicted class' ? p.predicted : p.classes.indexOf(v.target);
  if (t < 0) return;
  const opacity = Number(v.opacity), shared = v.scale === 'shared';
  const maps = decoded.maps[t];
  const top_all = Math.max(...maps.map(m => m.max));
  const [sh, sw] = p.side, size = p.display, seen = decoded.seen;
  const figs = cells(maps.length);
  maps.forEach((m, i) => {{
    const canvas = figs[i].querySelector('canvas');
    canvas.width = size; canvas.height = size;
    const ctx = canvas.getContext('2d'), img = ctx.createImageData(size, size), px = img.data;
    const top = shared ? top_all : m.max;
    const [y0, y1, fy] = axis(m.h, size), [x0, x1, fx] = axis(m.w, size);
    for (let y = 0; y < size; y++) {{
      const r0 = y0[y] * m.w, r1 = y1[y] * m.w, wy = fy[y], by = Math.floor(y * sh / size) * sw;
      for (let x = 0; x < size; x++) {{
        const a = m.v[r0 + x0[x]] * (1 - fx[x]) + m.v[r0 + x1[x]] * fx[x];
        const b = m.v[r1 + x0[x]] * (1 - fx[x]) + m.v[r1 + x1[x]] * fx[x];
        const u = top > 0 ? Math.min(Math.max((a * (1 - wy) + b * wy) / top, 0), 1) : 0;
        const s = (by + Math.floor(x * sw / size)) * 3, o = (y * size + x) * 4;
        px[o] = Math.min(Math.floor((1 - opacity) * seen[s] + opacity * jet(u, 3) + 0.5), 255);
        px[o + 1] = Math.min(Math.floor((1 - opacity) * seen[s + 1] + opacity * jet(u, 2) + 0.5), 255);
        px[o + 2] = Math.min(Math.floor((1 - opacity) * seen[s + 2] + opacity * jet(u, 1) + 0.5), 255);
        px[o + 3] = 255;
      }}
    }}
    ctx.putImageData(img, 0, 0);
    canvas.setAttribute('aria-label', `Grad-CAM for ${{p.classes[t]}} at ${{p.stages[i].name}} over the image`);
    figs[i].querySelector('figcaption').textContent = `${{p.stages[i].name}} · ${{m.h}}x${{m.w}} · max ${{g2(m.max)}}`;
  }});
  const name = p.classes[t], last = maps[maps.length - 1];
  const sizes = p.stages.map(s => `${{s.name}} ${{s.h}}x${{s.w}} (1 cell = ${{s.stride}}x${{s.stride}} px)`).join(', ');
  note.innerHTML = `Grad-CAM for <strong>${{name}}</strong> (p = ${{p.probs[t].toFixed(3)}}); `
    + (t === p.predicted ? 'the predicted class. ' : `the model predicts ${{p.classes[p.predicted]}}. `)
    + `Colour: blue = 0, red = ${{shared ? g2(top_all) + ', the largest value of all four maps' : 'each map’s own maximum'}}. `
    + `Stage resolutions: ${{sizes}}. ${{p.stages[p.stages.length - 1].name}} is only ${{last.h}}x${{last.w}} on a `
    + `${{sh}}x${{sw}} input, so its map is coarse by construction; the smooth look comes from bilinear upsampling.`;
  root.dataset.view = `${{name}}|${{opacity}}|${{v.scale}}`;
  root.dataset.key = p.key;
  root.dataset.draws = String(++draws);
}}

// One listener for the page; it draws with the strip mounted last (a tab can be mounted again).
window.__gradcamDraw = draw;
if (!window.__gradcamBound) {{
  window.__gradcamBound = true;
  document.addEventListener('{EVENT}', e => {{ window.__gradcamView = e.detail; window.__gradcamDraw(); }});
}}
watch('value', draw);
draw();
"""
