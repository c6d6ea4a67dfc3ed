// The loss plot: content, style and total loss over the iterations, drawn as SVG by the page
// itself (log scale: the losses fall by orders of magnitude).

const NS = "http://www.w3.org/2000/svg";
const W = 560;
const H = 240;
const PAD = { left: 56, right: 12, top: 14, bottom: 28 };
export const SERIES = [
  ["total", "Total"],
  ["style", "Style"],
  ["content", "Content"],
];

function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(v) {
  if (v === 0) return "0";
  const e = Math.floor(Math.log10(Math.abs(v)));
  if (e >= -2 && e < 5) return v.toPrecision(2).replace(/\.0+$/, "");
  return v.toExponential(0).replace("e+", "e");
}

/** An empty plot, to be filled by `drawLosses`. */
export function lossPlot() {
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "plot", id: "loss-plot", role: "img" });
  root.dataset.points = "0";
  root.append(svg("title", {}, "Loss over iterations"));
  return root;
}

/** Draws `points` ([{it, content, style, total}], iterations rising) into `root`. */
export function drawLosses(root, points) {
  while (root.childNodes.length > 1) root.lastChild.remove();
  root.dataset.points = String(points.length);
  const x0 = PAD.left;
  const x1 = W - PAD.right;
  const y0 = H - PAD.bottom;
  const y1 = PAD.top;
  root.append(svg("rect", { x: x0, y: y1, width: x1 - x0, height: y0 - y1, class: "frame" }));
  if (points.length === 0) {
    root.append(svg("text", { x: (x0 + x1) / 2, y: (y0 + y1) / 2, class: "empty" }, "waiting for the first iteration"));
    return;
  }
  const values = points.flatMap((p) => SERIES.map(([k]) => p[k])).filter((v) => v > 0);
  let lo = Math.log10(Math.min(...values));
  let hi = Math.log10(Math.max(...values));
  if (hi - lo < 1) { lo -= 0.5; hi += 0.5; }
  lo = Math.floor(lo);
  hi = Math.ceil(hi);
  const itMax = Math.max(points[points.length - 1].it, 1);
  const itMin = Math.min(points[0].it, itMax - 1);
  const sx = (it) => x0 + ((it - itMin) / (itMax - itMin)) * (x1 - x0);
  const sy = (v) => y0 - ((Math.log10(v) - lo) / (hi - lo)) * (y0 - y1);

  const step = Math.max(1, Math.ceil((hi - lo) / 5));
  for (let e = lo; e <= hi; e += step) {
    const y = sy(10 ** e);
    root.append(svg("line", { x1: x0, x2: x1, y1: y, y2: y, class: "grid" }));
    root.append(svg("text", { x: x0 - 6, y: y + 4, class: "tick y" }, fmt(10 ** e)));
  }
  for (const it of [itMin, Math.round((itMin + itMax) / 2), itMax]) {
    root.append(svg("text", { x: sx(it), y: y0 + 18, class: "tick x" }, String(it)));
  }
  for (const [key] of SERIES) {
    const pts = points.filter((p) => p[key] > 0).map((p) => `${sx(p.it).toFixed(1)},${sy(p[key]).toFixed(1)}`);
    if (pts.length === 0) continue;
    root.append(svg("polyline", { points: pts.join(" "), class: `line ${key}` }));
    const [lx, ly] = pts[pts.length - 1].split(",");
    root.append(svg("circle", { cx: lx, cy: ly, r: 3, class: `dot ${key}` }));
  }
}
