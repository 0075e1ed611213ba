/* vizgrad report player: paints each step onto the laid-out graph and draws the charts.
   Data from the run is only ever written with textContent / setAttribute, never parsed as HTML. */
/** The text of a gzip+base64 element (a big report's data, another view's layout), inflated by the browser. */
async function inflateText(packed) {
  const text = atob(packed.trim());
  const bytes = new Uint8Array(text.length);   // a plain loop: Uint8Array.from with a map callback is ~10x slower
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return new Response(stream).text();
}

(async function () {
  "use strict";

  const source = document.getElementById("vg-data");
  let DATA;
  try {
    DATA = JSON.parse(source.dataset.encoding === "gzip+base64" ? await inflateText(source.textContent) : source.textContent);
  } catch (error) {   // a browser without DecompressionStream (before Chrome 80, Firefox 113, Safari 16.4)
    document.getElementById("stage").textContent = "This report needs a newer browser to open its data (" + error.message + ").";
    throw error;
  }
  const SVG_NS = "http://www.w3.org/2000/svg";
  const COLUMNS = DATA.columns;               // every distinct column once; nodes and edges refer to them
  const VIEWS = DATA.views;                   // the views a click leads to; 0 is the one the page opens with
  const viewFrames = [];
  let currentView = 0;
  const allFrames = [];                       // every framesOf made, told to rebuild when a part's columns come
  let FRAMES = framesOf(DATA.segments);
  viewFrames[0] = FRAMES;

  /** Per-step records [layout, nodePaint, edgePaint, stats, bars] rebuilt from the page's columns:
      one segment per run of steps sharing a graph, one column per painted node or edge. Records are
      made when a step is first drawn (a big report would spend seconds making them all at load). */
  function framesOf(segments) {
    const owner = [], made = new Map();   // frame -> [segment, step within it]
    segments.forEach((seg, s) => { for (let i = 0; i < seg.count; i++) owner.push([s, i]); });
    const columnsOf = new Map();
    function columns(s) {
      if (!columnsOf.has(s)) {
        const seg = segments[s];
        const col = (n, field) => (n === null || n[field] === undefined ? null : COLUMNS[n[field]]);
        columnsOf.set(s, {
          fills: seg.nodes.map((n) => col(n, "fill")), flags: seg.nodes.map((n) => col(n, "flag")),
          lines: seg.nodes.map((n) => (n === null ? null : n.lines.map((r) => COLUMNS[r]))),
          stats: seg.nodes.map((n) => col(n, "stats")), bars: seg.nodes.map((n) => col(n, "bars")),
          edges: seg.edges.map((e) => (e === null ? null : [COLUMNS[e.color], COLUMNS[e.width], COLUMNS[e.flag]])),
        });
      }
      return columnsOf.get(s);
    }
    function at(pos) {
      let record = made.get(pos);
      if (record) return record;
      const [s, i] = owner[pos], seg = segments[s], c = columns(s);
      const np = [], ep = [], stats = [], bars = [];
      seg.nodes.forEach((n, k) => {
        if (n === null) { np.push(null, 0, null); stats.push(null); bars.push(null); return; }
        np.push(c.fills[k][i], c.flags[k][i], c.lines[k].map((lines) => lines[i]));
        stats.push(c.stats[k] ? statsEntry(c.stats[k], i) : null);
        bars.push(c.bars[k] ? c.bars[k].map((b) => [b.color[i], b.height[i]]) : null);   // a fold's strip
      });
      for (const e of c.edges) {
        if (e === null) ep.push(null, null, 0);
        else ep.push(e[0][i], e[1][i], e[2][i]);
      }
      record = [seg.layout, np, ep, stats, bars];
      made.set(pos, record);
      return record;
    }
    const frames = { length: owner.length, at: at, layoutAt: (pos) => segments[owner[pos][0]].layout,
      reset: () => { made.clear(); columnsOf.clear(); } };
    allFrames.push(frames);
    return frames;
  }

  function framesOfView(v) {
    if (!viewFrames[v]) viewFrames[v] = framesOf(v === 0 ? DATA.segments : VIEWS[v].segments);
    return viewFrames[v];
  }

  /** The inspector's statistics of one node at step i: null, the value of a one-element gradient,
      or [norm, mean, min, max] (+ NaN and Inf counts when there are any). */
  function statsEntry(st, i) {
    if (st.in) return { box: [st.in[i], st.out[i], st.inside[i]] };   // a module box or fold
    if (st.norm[i] === null) return null;
    if (st.one[i]) return st.mean[i];
    const entry = [st.norm[i], st.mean[i], st.min[i], st.max[i]];
    const bad = st.nan && (st.nan[i] || st.inf[i]);
    if (bad || st.abs) entry.push(bad ? st.nan[i] : 0, bad ? st.inf[i] : 0);
    if (st.abs) entry.push(st.abs[i]);   // a parameter's mean |g|
    return entry;
  }

  const COUNT = FRAMES.length;
  const XS = DATA.index;                      // the run's step index of every frame
  const STEP_XS = XS;
  const SERIES_COLORS = ["#0969da", "#bc4c00", "#1a7f37", "#8250df", "#cf222e", "#0e7490", "#9a6700", "#6e7781"];
  const PARAMS_SHOWN = DATA.params_shown;     // parameter charts drawn before "show all"
  const $ = (id) => document.getElementById(id);
  const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));

  // ------------------------------------------------------------------ formatting
  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "string") return v;     // "NaN", "Inf", "-Inf"
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1e5 || a < 1e-3) return v.toExponential(3).replace(/\.?0+e/, "e").replace("e+", "e");
    return String(Number(v.toPrecision(4)));
  }
  const num = (v) => (typeof v === "number" && isFinite(v) ? v : null);

  function svgEl(tag, attrs, parent) {
    const e = document.createElementNS(SVG_NS, tag);
    if (attrs) for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }

  function htmlEl(tag, className, text, parent) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (parent) parent.appendChild(e);
    return e;
  }

  // ------------------------------------------------------------------ scales and ticks
  function niceStep(span, count) {
    const raw = span / Math.max(1, count);
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    const m = raw / p;
    return (m < 1.5 ? 1 : m < 3 ? 2 : m < 7 ? 5 : 10) * p;
  }

  function linearTicks(lo, hi, count) {
    const step = niceStep(hi - lo, count);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    return out;
  }

  function decadeLabel(e) {
    if (e >= -3 && e <= 4) return String(Number(Math.pow(10, e).toPrecision(1)));
    return "1e" + e;
  }

  /** Domain of the finite values (positive ones on a log axis), padded. */
  function domain(values, log) {
    let lo = Infinity, hi = -Infinity;
    for (const v of values) {
      if (v === null || !isFinite(v) || (log && v <= 0)) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (lo > hi) return null;
    if (log) {
      let a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi));
      if (a === b) { a -= 1; b += 1; }
      return [a, b];
    }
    if (lo === hi) { const d = Math.abs(lo) * 0.1 || 1; lo -= d; hi += d; }
    const pad = (hi - lo) * 0.08;
    return [lo - pad, hi + pad];
  }

  // ------------------------------------------------------------------ charts
  let clipCounter = 0;

  /**
   * A small chart over the frames: lines (one per series, x = step) or a scatter
   * with a per-step line. Returns {render(), setPos(pos)}; render() rebuilds at
   * the container's current width. In a series, null is a gap in the line and
   * undefined a step the series does not cover (the line goes straight past it).
   */
  function makeChart(container, opts) {
    const XS = opts.xs || STEP_XS;   // x of every frame: its step, or its iteration (never decreasing)
    const state = { svg: null, setPos: () => {} };
    const height = opts.height || 120;

    function render() {
      container.textContent = "";
      const width = Math.max(200, container.clientWidth || 320);
      const m = { l: 46, r: 10, t: 8, b: opts.xTitle ? 30 : 20 };
      const pw = width - m.l - m.r, ph = height - m.t - m.b;
      const svg = svgEl("svg", { width: width, height: height, viewBox: "0 0 " + width + " " + height, role: "img" }, container);
      if (opts.label) svg.setAttribute("aria-label", opts.label);
      if (!opts.scatter) svg.setAttribute("data-scale", opts.log ? "log" : "linear");
      state.svg = svg;
      const built = opts.scatter ? scatterBody(svg, m, pw, ph) : linesBody(svg, m, pw, ph);
      if (!built) {
        container.textContent = "";
        htmlEl("div", "vg-empty", opts.empty || "nothing to draw", container);
        state.setPos = () => {};
        return;
      }
      state.setPos = built;
      if (!opts.scatter) seekOnPointer(svg, m, pw, built.sx);
    }

    function axes(svg, m, pw, ph, sx, sy, xTicks, yTicks, xText, yText) {
      const grid = svgEl("g", { class: "vg-grid" }, svg);
      const axis = svgEl("g", { class: "vg-axis" }, svg);
      for (const t of yTicks) {
        const y = m.t + sy(t);
        svgEl("line", { x1: m.l, x2: m.l + pw, y1: y, y2: y }, grid);
        const label = svgEl("text", { x: m.l - 5, y: y + 3, "text-anchor": "end" }, axis);
        label.textContent = yText(t);
      }
      for (const t of xTicks) {
        const x = m.l + sx(t);
        const label = svgEl("text", { x: x, y: m.t + ph + 13, "text-anchor": "middle" }, axis);
        label.textContent = xText(t);
      }
      if (opts.xTitle) {
        const t = svgEl("text", { class: "vg-axis-label", x: m.l + pw / 2, y: m.t + ph + 27, "text-anchor": "middle" }, axis);
        t.textContent = opts.xTitle;
      }
      if (opts.yTitle) {
        const t = svgEl("text", { class: "vg-axis-label", x: 0, y: 0, "text-anchor": "middle",
          transform: "translate(10," + (m.t + ph / 2) + ") rotate(-90)" }, axis);
        t.textContent = opts.yTitle;
      }
      svgEl("rect", { class: "vg-frame", x: m.l, y: m.t, width: pw, height: ph }, svg);
    }

    function linesBody(svg, m, pw, ph) {
      const log = !!opts.log;
      const all = [];
      for (const s of opts.series) for (const v of s.values) all.push(num(v));
      const yd = domain(all, log);
      if (!yd) return null;
      const x0 = XS[0], x1 = XS[COUNT - 1] === x0 ? x0 + 1 : XS[COUNT - 1];
      const sx = (x) => ((x - x0) / (x1 - x0)) * pw;
      const sy = log
        ? (v) => ph - ((Math.log10(v) - yd[0]) / (yd[1] - yd[0])) * ph
        : (v) => ph - ((v - yd[0]) / (yd[1] - yd[0])) * ph;
      let yTicks;
      if (log) {
        const every = Math.ceil((yd[1] - yd[0]) / 5);
        yTicks = [];
        for (let e = yd[0]; e <= yd[1]; e += every) yTicks.push(Math.pow(10, e));
      } else {
        yTicks = linearTicks(yd[0], yd[1], ph > 80 ? 4 : 2);
      }
      const xTicks = linearTicks(x0, x1, Math.max(2, Math.floor(pw / 70))).filter((t) => Number.isInteger(t));
      axes(svg, m, pw, ph, sx, sy, xTicks, yTicks, (t) => String(t),
        log ? (t) => decadeLabel(Math.round(Math.log10(t))) : (t) => fmt(Number(t.toPrecision(6))));

      const plot = svgEl("g", { transform: "translate(" + m.l + "," + m.t + ")" }, svg);
      const ok = (v) => v !== null && (!log || v > 0);
      opts.series.forEach((s, si) => {
        const color = s.color || SERIES_COLORS[si % SERIES_COLORS.length];
        // At most ~2 points per pixel: keep each bucket's min and max so spikes survive.
        const bucket = Math.max(1, Math.floor(COUNT / (pw * 2)));
        let d = "", pen = false, stretch = [];   // the steps drawn since the pen went down
        const lonely = [];                           // a step with no neighbour to join: drawn as a dot
        const lift = () => { if (stretch.length === 1) lonely.push(stretch[0]); stretch = []; pen = false; };
        for (let i = 0; i < COUNT; i += bucket) {
          let lo = null, hi = null, ilo = i, ihi = i, covered = false;
          for (let j = i; j < Math.min(COUNT, i + bucket); j++) {
            if (s.values[j] === undefined) continue;
            covered = true;
            const v = num(s.values[j]);
            if (!ok(v)) continue;
            if (lo === null || v < lo) { lo = v; ilo = j; }
            if (hi === null || v > hi) { hi = v; ihi = j; }
          }
          if (lo === null) { if (covered) lift(); continue; }
          const pts = ilo <= ihi ? [[ilo, lo], [ihi, hi]] : [[ihi, hi], [ilo, lo]];
          for (const [j, v] of pts) {
            d += (pen ? "L" : "M") + sx(XS[j]).toFixed(1) + " " + sy(v).toFixed(1);
            pen = true;
            if (!stretch.length || stretch[stretch.length - 1][0] !== j) stretch.push([j, v]);
          }
        }
        lift();
        svgEl("path", { class: "vg-series", d: d, stroke: color }, plot);
        for (const [j, v] of lonely) {
          svgEl("circle", { class: "vg-dot", cx: sx(XS[j]).toFixed(1), cy: sy(v).toFixed(1), r: 2, fill: color }, plot);
        }
      });
      const cursor = svgEl("line", { class: "vg-cursor", y1: 0, y2: ph }, plot);
      const markers = opts.series.map((s, si) => {
        const c = svgEl("circle", { class: "vg-marker", r: 3.5, fill: s.color || SERIES_COLORS[si % SERIES_COLORS.length] }, plot);
        if (si === 0 && opts.markerId) c.setAttribute("id", opts.markerId);
        return c;
      });
      const setPos = (pos) => {
        const x = sx(XS[pos]).toFixed(1);
        cursor.setAttribute("x1", x);
        cursor.setAttribute("x2", x);
        markers.forEach((c, si) => {
          const v = num(opts.series[si].values[pos]);
          c.setAttribute("data-step", String(XS[pos]));
          if (ok(v)) {
            c.setAttribute("cx", x);
            c.setAttribute("cy", sy(v).toFixed(1));
            c.removeAttribute("visibility");
          } else {
            c.setAttribute("visibility", "hidden");
          }
        });
      };
      setPos.sx = sx;
      return setPos;
    }

    function scatterBody(svg, m, pw, ph) {
      const spec = opts.scatter;
      const xsAll = [], ysAll = [];
      const addPts = (p) => { if (p) { p[0].forEach((v) => xsAll.push(num(v))); p[1].forEach((v) => ysAll.push(num(v))); } };
      addPts(spec.points);
      (spec.stepPoints || []).forEach(addPts);
      if (!xsAll.length) (spec.lines || []).forEach(addPts);   // only lines: frame them all
      const xd = domain(xsAll, false), yd = domain(ysAll, false);
      if (!xd || !yd) return null;
      const sx = (v) => ((v - xd[0]) / (xd[1] - xd[0])) * pw;
      const sy = (v) => ph - ((v - yd[0]) / (yd[1] - yd[0])) * ph;
      axes(svg, m, pw, ph, sx, sy, linearTicks(xd[0], xd[1], Math.max(2, Math.floor(pw / 60))),
        linearTicks(yd[0], yd[1], ph > 100 ? 4 : 3), fmt, fmt);
      const clipId = "vg-clip-" + (++clipCounter);
      const clip = svgEl("clipPath", { id: clipId }, svg);
      svgEl("rect", { x: 0, y: 0, width: pw, height: ph }, clip);
      const plot = svgEl("g", { transform: "translate(" + m.l + "," + m.t + ")" }, svg);
      const inner = svgEl("g", { "clip-path": "url(#" + clipId + ")" }, plot);
      const dots = svgEl("g", {}, inner);
      const drawPoints = (p) => {
        dots.textContent = "";
        if (!p) return;
        for (let i = 0; i < p[0].length; i++) {
          const x = num(p[0][i]), y = num(p[1][i]);
          if (x === null || y === null) continue;
          svgEl("circle", { class: "vg-point", cx: sx(x).toFixed(1), cy: sy(y).toFixed(1), r: 3.5 }, dots);
        }
      };
      drawPoints(spec.points);
      const line = svgEl("path", { class: "vg-fit" }, inner);
      return (pos) => {
        if (spec.stepPoints) drawPoints(spec.stepPoints[pos]);
        const l = spec.lines ? spec.lines[pos] : null;
        let d = "";
        if (l) {
          let pen = false;
          for (let i = 0; i < l[0].length; i++) {
            const x = num(l[0][i]), y = num(l[1][i]);
            if (x === null || y === null) { pen = false; continue; }
            d += (pen ? "L" : "M") + sx(x).toFixed(1) + " " + sy(y).toFixed(1);
            pen = true;
          }
        }
        line.setAttribute("d", d);
      };
    }

    // Click or drag on a step chart to move the player there.
    function seekOnPointer(svg, m, pw, sx) {
      svg.style.cursor = "crosshair";
      const seek = (e) => {
        const r = svg.getBoundingClientRect();
        const x = clamp(e.clientX - r.left - m.l, 0, pw);
        const target = XS[0] + (x / pw) * ((XS[COUNT - 1] - XS[0]) || 1);
        let lo = 0, hi = COUNT - 1;
        while (lo < hi) { const mid = (lo + hi) >> 1; if (XS[mid] < target) lo = mid + 1; else hi = mid; }
        if (lo > 0 && Math.abs(XS[lo - 1] - target) < Math.abs(XS[lo] - target)) lo -= 1;
        player.pause();
        player.seek(lo);
      };
      svg.addEventListener("pointerdown", (e) => {
        if (e.button !== 0) return;
        svg.setPointerCapture(e.pointerId);
        seek(e);
        const move = (ev) => seek(ev);
        const up = () => { svg.removeEventListener("pointermove", move); svg.removeEventListener("pointerup", up); };
        svg.addEventListener("pointermove", move);
        svg.addEventListener("pointerup", up);
      });
    }

    render();
    return {
      render: render,
      setPos: (pos) => state.setPos(pos),
    };
  }

  // ------------------------------------------------------------------ the graph
  const viewport = $("viewport");
  const stage = $("stage");
  const layouts = DATA.layouts.map((meta) => ({ meta: meta, svg: null }));
  const PT = 4 / 3;                           // Graphviz works in points; the page in CSS pixels
  let mounted = -1;

  /**
   * The SVG of layout k (taken once: prepareLayout keeps it), from its <template> or its inflated copy
   * (see inflateLayouts), which the HTML parser reads as it reads an inline one: a 3 MB layout in 0.2 s,
   * where DOMParser's XML and a copy took 0.6 s.
   */
  function layoutSvg(k) {
    let holder = $("vg-layout-" + k);
    if (layouts[k].text !== undefined) {
      holder = document.createElement("template");
      holder.innerHTML = layouts[k].text;
      layouts[k].text = undefined;
    }
    return document.adoptNode(holder.content.querySelector("svg"));
  }

  /** Inflates the compressed layouts view v draws (gzip, in the browser's own DecompressionStream). */
  async function inflateLayouts(v) {
    const wanted = new Set((v === 0 ? DATA.segments : VIEWS[v].segments).map((seg) => seg.layout));
    for (const k of wanted) {
      const source = $("vg-layout-" + k);
      if (layouts[k].svg || layouts[k].text !== undefined || source.tagName === "TEMPLATE") continue;
      layouts[k].text = await inflateText(source.textContent);
    }
  }

  /** A part of a big report's data (other views' columns, more parameters), inflated and parsed once, on first use. */
  const dataParts = new Map();
  function dataPart(name) {
    if (!dataParts.has(name)) {
      const source = $("vg-part-" + name);
      dataParts.set(name, source ? inflateText(source.textContent).then((text) => JSON.parse(text)) : Promise.resolve(null));
    }
    return dataParts.get(name);
  }

  /** Fills in the columns of part `name`; step records made before are made again from them. */
  async function fillColumns(name) {
    const got = await dataPart(name);
    if (got.filled) return;
    got.at.forEach((k, j) => { COLUMNS[k] = got.columns[j]; });
    got.filled = true;
    allFrames.forEach((frames) => frames.reset());
  }

  /** Fills in the columns view v draws that came in parts (the first view's come with the page). */
  async function loadColumns(v) {
    for (const name of VIEWS[v].packs || []) await fillColumns(name);
  }

  // A big report's inspector numbers come in a part of their own, inflated once the first step is painted.
  let statsPending = null;

  /** Inflates layout k when it came compressed (a torch.autograd.grad call's graph). */
  async function inflateLayout(k) {
    const source = $("vg-layout-" + k);
    if (!layouts[k].svg && layouts[k].text === undefined && source.tagName !== "TEMPLATE") layouts[k].text = await inflateText(source.textContent);
  }

  // A big layout keeps only the groups on (or near) the screen in the document; each other one is out of
  // it, a comment holding its place, so a step switch restyles, lays out and paints what is seen, not the
  // whole graph (a 1,800-node graph: 150 ms a switch drawn whole, about 30 ms culled), and mounting it
  // styles a few hundred elements, not 25,000 (display:none groups are still styled: 0.5 s). Where each
  // group is comes from the layout (meta.boxes), so nothing is measured. A hidden group's paint waits in
  // `pending` until it comes into view.
  const CULL_ABOVE = 400;   // node and edge groups of a layout past which it is drawn by visibility
  const FAR_BELOW = 0.3;    // zoom under which a culled layout (its text under 4 px) is drawn on a canvas

  /** Parses a layout's SVG (once) and finds the elements each step restyles. */
  function prepareLayout(k) {
    const L = layouts[k];
    if (L.svg) return L;
    const svg = layoutSvg(k);
    L.width = L.meta.w * PT;
    L.height = L.meta.h * PT;
    svg.setAttribute("width", L.width.toFixed(1));
    svg.setAttribute("height", L.height.toFixed(1));
    const groups = Array.from(svg.querySelectorAll("g.vg-node, g.vg-edge, g.vg-cluster"));
    const boxes = L.meta.boxes || [];
    // The layout's boxes are in points, one per group in document order; a count that differs (an SVG
    // that is not the layout's) turns culling off rather than guess.
    L.culled = groups.length > CULL_ABOVE && boxes.length === 4 * groups.length;
    L.items = new Map();     // group -> { box (unscaled stage pixels), shown }
    groups.forEach((g, i) => {
      const box = L.culled ? boxes.slice(4 * i, 4 * i + 4).map((v) => v * PT) : null;
      L.items.set(g, { g: g, box: box, shown: !L.culled });
    });
    const nodeGroups = new Map(), edgeGroups = new Map();
    const add = (map, key, g) => { if (!map.has(key)) map.set(key, []); map.get(key).push(g); };
    // A shared leaf may be drawn once per use: every copy carries the same data-node.
    svg.querySelectorAll("g.vg-node").forEach((g) => add(nodeGroups, g.getAttribute("data-node"), g));
    L.modules = new Map();   // module key -> its box or cluster
    svg.querySelectorAll("[data-module]").forEach((g) => L.modules.set(g.getAttribute("data-module"), g));
    svg.querySelectorAll("g.vg-edge").forEach((g) => { if (g.querySelector("path.vg-path")) add(edgeGroups, g.getAttribute("data-edge"), g); });
    L.groups = nodeGroups;
    L.position = new Map();
    L.meta.painted.forEach((id, i) => L.position.set(id, i));
    // A copy's elements are found when it is first painted (primeNode, primeEdge): a big layout's hidden
    // groups cost nothing at load.
    L.nodes = L.meta.painted.map((id) => (nodeGroups.get(id) || []).map((g) => {
      const N = { g: g, item: L.items.get(g), primed: false, fill: undefined, flag: "" };
      N.item.copy = N;
      return N;
    }));
    L.edges = L.meta.edges.map((key) => (edgeGroups.get(key) || []).map((g) => {
      const E = { g: g, item: L.items.get(g), edge: true, primed: false, color: undefined, width: undefined, flag: "" };
      E.item.copy = E;
      return E;
    }));
    if (L.culled) {
      for (const item of L.items.values()) {
        item.mark = document.createComment("");
        item.g.replaceWith(item.mark);
      }
    }
    L.svg = svg;
    return L;
  }

  /** The elements of the mounted graph that match `selector`, drawn or not (a culled group may be out). */
  function graphAll(selector) {
    const L = mounted >= 0 ? layouts[mounted] : null;
    const found = Array.from(stage.querySelectorAll(selector));
    if (L && L.culled) for (const item of L.items.values()) if (!item.shown && item.g.matches(selector)) found.push(item.g);
    return found;
  }
  const graphOne = (selector) => graphAll(selector)[0] || null;   // the one drawn first, else a hidden one

  /** The outline of a node or module group: its painted shape, else Graphviz's first one. */
  const shapeOf = (g) => g.querySelector(".vg-shape") || g.querySelector("polygon, ellipse, path");

  function mountLayout(k) {
    const L = prepareLayout(k);
    if (mounted !== k) {
      pending.clear();
      stage.textContent = "";
      stage.appendChild(L.svg);
      const first = mounted === -1;
      mounted = k;
      if (first) view.initial();
      else view.settle();   // another graph shape or view: placed anew unless the reader moved the view
      cull();
      if (inspector.node !== null) inspector.highlight();
    }
    return L;
  }

  /** Where group g of the mounted layout is, in unscaled stage pixels: from the layout, else measured. */
  function boxOf(g) {
    const item = mounted >= 0 && layouts[mounted].items ? layouts[mounted].items.get(g) : null;
    if (item && item.box) return item.box;
    const r = g.getBoundingClientRect(), s = stage.getBoundingClientRect(), k = view.get().k;
    return [(r.left - s.left) / k, (r.top - s.top) / k, (r.right - s.left) / k, (r.bottom - s.top) / k];
  }

  // The viewport's size, read when it changes: reading it while a step is painted forces a layout.
  let viewportSize = null;
  if (window.ResizeObserver) new ResizeObserver(() => { viewportSize = null; }).observe(viewport);

  /** The part of the stage on screen, widened by `margin` screens on each side, in unscaled stage pixels. */
  function onScreen(margin) {
    if (!viewportSize) viewportSize = [viewport.clientWidth, viewport.clientHeight];
    const v = view.get(), w = viewportSize[0], h = viewportSize[1];
    return [(-v.x - margin * w) / v.k, (-v.y - margin * h) / v.k, ((1 + margin) * w - v.x) / v.k, ((1 + margin) * h - v.y) / v.k];
  }
  const inside = (p, r) => p[2] >= r[0] && p[0] <= r[2] && p[3] >= r[1] && p[1] <= r[3];

  const pending = new Map();   // node or edge copy, hidden -> the paint it waits for

  /**
   * Shows the culled layout's groups that came near the screen (a fifth of a screen around it), painted
   * with the step on screen, and hides those that went far (half a screen): panning back and forth at
   * the edge does not toggle them. Zoomed out (text under 4 px), the overview canvas draws it instead.
   */
  function cull() {
    const L = mounted >= 0 ? layouts[mounted] : null;
    if (!L || !L.culled) { overview.show(false); return; }
    const zoomedOut = view.get().k < FAR_BELOW;
    overview.show(zoomedOut);
    const near = onScreen(0.2), far = onScreen(0.5);
    for (const item of L.items.values()) {
      if (!item.shown && !zoomedOut && inside(item.box, near)) {
        item.shown = true;
        item.mark.after(item.g);
        const copy = item.copy, args = copy ? pending.get(copy) : undefined;
        if (args) {
          pending.delete(copy);
          if (copy.edge) paintEdge(copy, ...args); else paintNode(copy, ...args);
        }
      } else if (item.shown && (zoomedOut || !inside(item.box, far))) {
        item.shown = false;
        item.g.remove();
      }
    }
  }

  // ------------------------------------------------------------------ overview canvas
  // Zoomed out, a big graph has thousands of groups on screen and no readable text. As SVG a step switch
  // then costs 100+ ms of style, layout and paint; on a canvas it is one pass over prepared paths, every
  // group out of the document. It draws fills, outlines, edges, NaN/Inf flags, and the selected node.
  const overview = (function () {
    const canvas = document.createElement("canvas");
    canvas.className = "vg-overview";
    canvas.hidden = true;
    viewport.appendChild(canvas);
    const ctx = canvas.getContext("2d");
    let on = false, queued = 0;

    function pathOf(el) {
      if (!el) return null;
      const tag = el.tagName.toLowerCase();
      if (tag === "path") return new Path2D(el.getAttribute("d") || "");
      if (tag === "ellipse") {
        const p = new Path2D(), n = (a) => Number(el.getAttribute(a)) || 0;
        p.ellipse(n("cx"), n("cy"), n("rx"), n("ry"), 0, 0, 2 * Math.PI);
        return p;
      }
      const points = (el.getAttribute("points") || "").trim().split(/\s+/);
      return new Path2D("M" + points.join("L") + "Z");
    }

    /** Layout L's shapes, made once: per group its outline and paths, in document order (later on top). */
    function shapesOf(L) {
      if (L.shapes) return L.shapes;
      const graph = L.svg.querySelector("g.graph");
      const m = graph && graph.transform.baseVal.consolidate();
      L.graphMatrix = m ? m.matrix : { a: 1, b: 0, c: 0, d: 1, e: 0, f: 0 };   // graph units -> viewBox points
      L.shapes = [];
      for (const item of L.items.values()) {
        const g = item.g, copy = item.copy;
        if (g.classList.contains("vg-edge")) {
          const path = g.querySelector("path");
          L.shapes.push({ item: item, kind: "edge", path: pathOf(path), heads: Array.from(g.querySelectorAll("polygon"), pathOf),
            stroke: path ? path.getAttribute("stroke") || "#6b6b6b" : "#6b6b6b" });
        } else {
          const cluster = g.classList.contains("vg-cluster");
          const shape = shapeOf(g);
          L.shapes.push({ item: item, kind: cluster ? "cluster" : "node", path: pathOf(shape),
            fill: cluster ? null : shape && shape.getAttribute("fill"), stroke: shape ? shape.getAttribute("stroke") : null,
            width: shape ? Number(shape.getAttribute("stroke-width")) || 1 : 1 });
        }
      }
      return L.shapes;
    }

    function draw() {
      queued = 0;
      const L = mounted >= 0 ? layouts[mounted] : null;
      if (!on || !L) return;
      if (!viewportSize) viewportSize = [viewport.clientWidth, viewport.clientHeight];
      const dpr = window.devicePixelRatio || 1, w = Math.round(viewportSize[0] * dpr), h = Math.round(viewportSize[1] * dpr);
      if (canvas.width !== w || canvas.height !== h) {
        canvas.width = w;
        canvas.height = h;
        canvas.style.width = viewportSize[0] + "px";
        canvas.style.height = viewportSize[1] + "px";
      }
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.clearRect(0, 0, w, h);
      const shapes = shapesOf(L), v = view.get(), s = dpr * v.k * PT, m = L.graphMatrix, seen = onScreen(0);
      ctx.setTransform(s * m.a, s * m.b, s * m.c, s * m.d, dpr * v.x + s * m.e, dpr * v.y + s * m.f);
      const hair = 1 / (s * Math.hypot(m.a, m.b));   // one device pixel, in graph units
      ctx.lineJoin = "round";
      for (const shape of shapes) {
        if (!shape.path || !inside(shape.item.box, seen)) continue;
        const copy = shape.item.copy, args = copy ? pending.get(copy) : undefined;
        if (shape.kind === "edge") {
          const color = args ? args[0] : copy ? copy.color : undefined, width = args ? args[1] : copy ? copy.width : undefined;
          const ink = color === null || color === undefined ? shape.stroke : DATA.palette[color];
          ctx.strokeStyle = ink;
          ctx.lineWidth = Math.max(width === null || width === undefined ? 1 : width, hair);
          ctx.stroke(shape.path);
          ctx.fillStyle = ink;
          shape.heads.forEach((head) => { if (head) ctx.fill(head); });
          continue;
        }
        if (shape.kind === "node") {
          const fill = args ? args[0] : copy ? copy.fill : undefined;
          const paint = fill === null || fill === undefined ? shape.fill : DATA.palette[fill];
          if (paint && paint !== "none") { ctx.fillStyle = paint; ctx.fill(shape.path); }
        }
        const flag = args ? args[1] : copy ? copy.flag : "";
        const g = shape.item.g, marked = g.classList.contains("vg-selected") || g.classList.contains("vg-flow-focus");
        ctx.strokeStyle = marked ? "#0969da" : flag === "nan" || flag === "inf" ? "#b00000" : shape.stroke || "#8c959f";
        ctx.lineWidth = Math.max(marked ? 4 : flag === "nan" || flag === "inf" ? 4 : shape.width, hair * (marked ? 3 : 1));
        ctx.stroke(shape.path);
      }
    }

    /** Draws on the next frame (once however often it is asked). */
    const request = () => { if (on && !queued) queued = requestAnimationFrame(draw); };
    return {
      get on() { return on; },
      request: request,
      /** Shows the canvas (the graph zoomed out) or hides it. */
      show: (wanted) => {
        on = wanted;
        canvas.hidden = !on;
        request();
      },
      /** The node, else the innermost module frame, drawn at a point of the window (clientX, clientY). */
      hit: (cx, cy) => {
        const L = mounted >= 0 ? layouts[mounted] : null;
        if (!on || !L) return null;
        const r = viewport.getBoundingClientRect(), v = view.get();
        const px = (cx - r.left - v.x) / v.k, py = (cy - r.top - v.y) / v.k;
        let best = null, area = Infinity;
        for (const item of L.items.values()) {
          const b = item.box;
          if (px < b[0] || px > b[2] || py < b[1] || py > b[3]) continue;
          if (item.g.classList.contains("vg-node")) return item.g;
          const a = (b[2] - b[0]) * (b[3] - b[1]);
          if (item.g.classList.contains("vg-cluster") && a < area) { best = item.g; area = a; }
        }
        return best;
      },
    };
  })();

  /** Finds node copy N's shape, text lines and a fold's bars, and what they show before any step. */
  function primeNode(N) {
    const g = N.g;
    N.primed = true;
    N.shape = shapeOf(g);
    N.vals = [];
    g.querySelectorAll("text.vg-val").forEach((t) => { N.vals[Number(t.getAttribute("data-line")) || 0] = t; });
    N.texts = Array.from(g.querySelectorAll("text"));
    const strip = g.querySelector("rect.vg-strip");
    N.bars = [];
    N.barState = [];
    g.querySelectorAll("rect.vg-bar").forEach((r) => { N.bars[Number(r.getAttribute("data-bar"))] = r; });
    N.stripBottom = strip ? Number(strip.getAttribute("y")) + Number(strip.getAttribute("height")) : 0;
    N.stripHeight = strip ? Number(strip.getAttribute("height")) : 0;
    N.fill0 = N.shape ? N.shape.getAttribute("fill") : null;
    N.ink0 = N.texts.map((t) => t.getAttribute("fill"));
    N.vals0 = N.vals.map((t) => (t ? t.textContent : ""));
  }

  /** Finds edge copy E's path and arrowheads, and how they look before any step. */
  function primeEdge(E) {
    E.primed = true;
    E.path = E.g.querySelector("path.vg-path");
    E.heads = Array.from(E.g.querySelectorAll("polygon.vg-head"));
    E.stroke0 = E.path.getAttribute("stroke");
    E.width0 = E.path.getAttribute("stroke-width");
  }

  function setFlag(item, flag) {
    if (item.flag === flag) return;
    if (item.flag) item.g.classList.remove("vg-flag-" + item.flag);
    if (flag) item.g.classList.add("vg-flag-" + flag);
    item.flag = flag;
  }

  // Value lines are fixed-width; keep their spaces (SVG would collapse them).
  const keepSpaces = (text) => String(text).replace(/ /g, "\u00a0");

  /** A fold's strip: each bar's height (hundredths of the strip) and colour at this step. */
  function paintBars(N, bars) {
    for (let j = 0; j < N.bars.length; j++) {
      const rect = N.bars[j], bar = bars ? bars[j] : null;
      const key = bar ? bar[0] + ":" + bar[1] : "";
      if (!rect || N.barState[j] === key) continue;
      N.barState[j] = key;
      const size = bar ? (N.stripHeight * bar[1]) / 100 : 0;
      rect.setAttribute("y", (N.stripBottom - size).toFixed(2));
      rect.setAttribute("height", size.toFixed(2));
      rect.setAttribute("fill", bar ? DATA.palette[bar[0]] : "#c8c8c8");
    }
  }

  /** Paints node copy N: its fill, ink, value lines, flag and a fold's bars. */
  function paintNode(N, fill, flag, lines, bars) {
    if (!N.primed) primeNode(N);
    if (fill !== N.fill) {
      N.fill = fill;
      if (N.shape) N.shape.setAttribute("fill", fill === null ? N.fill0 || "none" : DATA.palette[fill]);
      const ink = fill === null ? null : DATA.ink[fill];
      N.texts.forEach((t, j) => {
        const c = ink || N.ink0[j];
        if (c) t.setAttribute("fill", c); else t.removeAttribute("fill");
      });
    }
    for (let j = 0; j < N.vals.length; j++) {
      const t = N.vals[j];
      if (!t) continue;
      const value = lines ? (lines[j] === undefined ? "" : keepSpaces(lines[j])) : N.vals0[j];
      if (t.textContent !== value) t.textContent = value;
    }
    setFlag(N, flag);
    if (N.bars.length) paintBars(N, bars);
  }

  /** Paints edge copy E: its colour, width and flag. */
  function paintEdge(E, color, width, flag) {
    if (!E.primed) primeEdge(E);
    if (color !== E.color) {
      E.color = color;
      const c = color === null ? E.stroke0 || "#6b6b6b" : DATA.palette[color];
      E.path.setAttribute("stroke", c);
      E.heads.forEach((h) => { h.setAttribute("fill", c); h.setAttribute("stroke", c); });
    }
    if (width !== E.width) {
      E.width = width;
      E.path.setAttribute("stroke-width", width === null ? E.width0 || "1" : String(width));
    }
    setFlag(E, flag);
  }

  function paint(pos) {
    if (pos >= FRAMES.length) {   // a rank whose recording stopped before this step: show the merged one
      views.say("rank " + ranks.picked() + " recorded no step " + XS[pos] + " (its recording stopped); " +
        "this is rank " + DATA.ranks.reference + "'s");
      paintFrame(framesOfView(0).at(pos));
      return;
    }
    paintFrame(FRAMES.at(pos));
  }

  /** Paints one frame record (a step's, or a torch.autograd.grad call's) on its layout. */
  function paintFrame(frame) {
    const L = mountLayout(frame[0]);
    const np = frame[1], ep = frame[2], bp = frame[4];
    for (let k = 0; k < L.nodes.length; k++) {
      const fill = np[3 * k], flag = DATA.flags[np[3 * k + 1]] || "";
      let lines = np[3 * k + 2];
      if (typeof lines === "number") lines = np[3 * lines + 2];   // same lines as an earlier node
      for (const N of L.nodes[k]) {
        if (N.item.shown) { pending.delete(N); paintNode(N, fill, flag, lines, bp[k]); }
        else pending.set(N, [fill, flag, lines, bp[k]]);
      }
    }
    for (let k = 0; k < L.edges.length; k++) {
      const color = ep[3 * k], width = ep[3 * k + 1], flag = DATA.flags[ep[3 * k + 2]] || "";
      for (const E of L.edges[k]) {
        if (E.item.shown) { pending.delete(E); paintEdge(E, color, width, flag); }
        else pending.set(E, [color, width, flag]);
      }
    }
    overview.request();
  }

  // ------------------------------------------------------------------ zoom and pan
  // Zoom at which node labels (10 pt: 13.3 px at zoom 1) are 6.7 px: the least that fits a whole view
  // on screen at first (a 12-block GPT view of 14 boxes fits a 1280 x 800 window at about 0.51).
  const READABLE_ZOOM = 0.5;
  const view = (function () {
    let x = 0, y = 0, k = 1;
    let cullTimer = 0;
    const apply = () => {
      stage.style.transform = "translate(" + x.toFixed(1) + "px," + y.toFixed(1) + "px) scale(" + k.toFixed(4) + ")";
      if (mounted >= 0 && layouts[mounted].culled && !cullTimer) cullTimer = requestAnimationFrame(() => { cullTimer = 0; cull(); });
    };
    const size = () => (mounted >= 0 ? layouts[mounted] : { width: 100, height: 100 });
    function zoomAt(factor, cx, cy) {
      const nk = clamp(k * factor, 0.03, 8);
      x = cx - (cx - x) * (nk / k);
      y = cy - (cy - y) * (nk / k);
      k = nk;
      apply();
    }
    // Margins of a fitted graph: clear of the zoom buttons at the left, a little above and below.
    const PAD_X = 48, PAD_Y = 16;
    const fitScale = (L, vw, vh) => Math.min((vw - 2 * PAD_X) / L.width, (vh - 2 * PAD_Y) / L.height);
    function fit() {
      const L = size(), vw = viewport.clientWidth, vh = viewport.clientHeight;
      k = clamp(fitScale(L, vw, vh), 0.03, 1.6);
      x = (vw - L.width * k) / 2;
      y = (vh - L.height * k) / 2;
      apply();
    }
    /** Where a node's box is, in unscaled stage pixels. */
    function nodeBox(g) {
      const b = boxOf(g);
      return { x: b[0], y: b[1], w: b[2] - b[0], h: b[3] - b[1] };
    }
    /**
     * The whole graph when its text stays readable (READABLE_ZOOM); else readable
     * size, around the loss at the bottom, where the gradient starts.
     */
    function reset() {
      const L = size(), vw = viewport.clientWidth, vh = viewport.clientHeight, pad = 28;
      if (fitScale(L, vw, vh) >= READABLE_ZOOM) { fit(); return; }
      const rootInfo = L.meta ? L.meta.nodes.find((n) => n[2] === "root") : null;
      const rootGroup = rootInfo && L.groups ? (L.groups.get(rootInfo[0]) || [])[0] : null;
      const box = rootGroup ? nodeBox(rootGroup) : null;
      k = clamp(Math.min(1, (vw - 2 * pad) / L.width), 0.75, 1);
      if (box) {
        x = vw / 2 - (box.x + box.w / 2) * k;
        y = vh - pad - (box.y + box.h) * k;
      } else {
        x = (vw - L.width * k) / 2;
        y = pad;
      }
      apply();
    }
    // Until the user zooms or pans, keep the view right for the viewport's size
    // (a report in a notebook may be laid out after it was drawn, or resized).
    let touched = false;
    const touch = () => { touched = true; };
    if (window.ResizeObserver) {
      new ResizeObserver(() => { if (!touched && mounted >= 0 && viewport.clientWidth > 0) reset(); }).observe(viewport);
    }
    return {
      zoomAt: (f, cx, cy) => { touch(); zoomAt(f, cx, cy); },
      fit: () => { touch(); fit(); },
      reset: () => { touched = false; reset(); },
      initial: reset,
      settle: () => { if (!touched) reset(); },
      zoomCenter: (f) => { touch(); zoomAt(f, viewport.clientWidth / 2, viewport.clientHeight / 2); },
      panBy: (dx, dy) => { touch(); x += dx; y += dy; apply(); },
      /** Pans so that element `g` of the graph is in the middle, at the current zoom. */
      centerOn: (g) => {
        touch();
        const b = nodeBox(g);
        x = viewport.clientWidth / 2 - (b.x + b.w / 2) * k;
        y = viewport.clientHeight / 2 - (b.y + b.h / 2) * k;
        apply();
      },
      /** Where the middle of element `g` of the mounted graph is on screen, in viewport pixels. */
      centerOf: (g) => {
        const b = nodeBox(g);
        return { x: x + (b.x + b.w / 2) * k, y: y + (b.y + b.h / 2) * k };
      },
      get: () => ({ x: x, y: y, k: k }),
    };
  })();

  viewport.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = viewport.getBoundingClientRect();
    const delta = e.deltaMode === 1 ? e.deltaY * 16 : e.deltaY;
    view.zoomAt(Math.exp(-delta * 0.0015), e.clientX - r.left, e.clientY - r.top);
  }, { passive: false });

  (function dragToPan() {
    let start = null;
    viewport.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      const target = (overview.on && overview.hit(e.clientX, e.clientY)) || e.target;   // the canvas: found by box
      const node = target.closest ? target.closest("g.vg-node") : null;
      start = { x: e.clientX, y: e.clientY, id: e.pointerId, node: node, target: target, dragging: false };
    });
    viewport.addEventListener("pointermove", (e) => {
      if (!start || e.pointerId !== start.id) return;
      const dx = e.clientX - start.x, dy = e.clientY - start.y;
      if (!start.dragging && Math.hypot(dx, dy) > 4) {
        start.dragging = true;
        viewport.setPointerCapture(e.pointerId);
        viewport.classList.add("vg-dragging");
      }
      if (start.dragging) {
        view.panBy(dx, dy);
        start.x = e.clientX;
        start.y = e.clientY;
      }
    });
    const end = (e) => {
      if (!start || e.pointerId !== start.id) return;
      if (!start.dragging) {
        const module = start.target && start.target.closest ? start.target.closest("[data-module]") : null;
        const cluster = module && module.classList.contains("vg-cluster");
        if (module && !cluster && e.shiftKey) inspector.open(module.getAttribute("data-node"));   // a box's numbers
        else if (module && (!cluster || !start.node)) views.click(module);   // a box, or an open module's frame
        else if (start.node) inspector.open(start.node.getAttribute("data-node"));
      }
      viewport.classList.remove("vg-dragging");
      start = null;
    };
    viewport.addEventListener("pointerup", end);
    viewport.addEventListener("pointercancel", () => { start = null; viewport.classList.remove("vg-dragging"); });
  })();

  $("zoom-in").addEventListener("click", () => view.zoomCenter(1.25));
  $("zoom-out").addEventListener("click", () => view.zoomCenter(0.8));
  $("zoom-reset").addEventListener("click", () => view.reset());
  $("zoom-fit").addEventListener("click", () => view.fit());

  // ------------------------------------------------------------------ node inspector
  const inspector = (function () {
    const box = $("inspector");
    const chartBox = $("inspector-chart");
    let chart = null;
    // Ids are per layout ("n3" is another node in another graph shape): a selection is both.
    const self = { node: null, layout: -1 };

    function infoOf(layout, id) {
      return layouts[layout].meta.nodes.find((n) => n[0] === id) || null;
    }

    /** [norm, mean, min, max, nan, inf] from the compact form the report stores (see report.py). */
    function statsOf(all, i) {
      let entry = all[i];
      if (Array.isArray(entry) && entry.length === 1) entry = all[entry[0]];   // same as an earlier node
      if (entry === null || entry === undefined) return [null, null, null, null, 0, 0];
      if (entry.box) return [entry.box[0], null, null, null, 0, 0, entry.box];   // in, out, largest inside
      if (!Array.isArray(entry)) return [typeof entry === "number" ? Math.abs(entry) : entry, entry, entry, entry, 0, 0];
      return [entry[0], entry[1], entry[2], entry[3], entry[4] || 0, entry[5] || 0, undefined, entry[6]];
    }

    /** Gradient norm of node `id` of a layout at every frame: undefined on frames of other layouts,
        null where no finite gradient. */
    function history(layout, id) {
      const i = layouts[layout].meta.painted.indexOf(id);
      const out = [];
      for (let pos = 0; pos < FRAMES.length; pos++) {
        out.push(FRAMES.layoutAt(pos) !== layout ? undefined : i < 0 ? null : num(statsOf(FRAMES.at(pos)[3], i)[0]));
      }
      return out;
    }

    self.highlight = function () {
      graphAll(".vg-selected").forEach((g) => g.classList.remove("vg-selected"));
      overview.request();
      if (self.node === null || mounted !== self.layout) return;
      (layouts[mounted].groups.get(self.node) || []).forEach((g) => g.classList.add("vg-selected"));
    };

    /** Shows node `id` of the layout on screen (or of `layout`). */
    self.open = function (id, layout) {
      if (layout === undefined) layout = mounted;
      const info = layout >= 0 && layout < layouts.length ? infoOf(layout, id) : null;
      if (!info) return;
      self.node = id;
      self.layout = layout;
      const [nodeId, op, kind, name, shape, module] = info;
      $("inspector-title").textContent = name || op;
      // The graph shapes of this view (the other views have layouts of their own).
      const shapes = [...new Set((currentView === 0 ? DATA.segments : VIEWS[currentView].segments).map((seg) => seg.layout))];
      const shapeName = shapes.length > 1 ? "graph shape " + (shapes.indexOf(layout) + 1) + " of " + shapes.length : null;
      const parts = [name ? op : null, kind, shape, module, nodeId, shapeName].filter((p) => p);
      $("inspector-sub").textContent = parts.join(" · ");
      box.hidden = false;
      if (statsPending) {   // the numbers are still being inflated: shown when they are
        $("inspector-stats").textContent = "loading the statistics…";
        statsPending.then(() => { if (self.node === id && self.layout === layout) self.open(id, layout); });
        return;
      }
      const values = history(layout, id);
      const scope = $("inspector-scope");
      scope.hidden = shapes.length < 2;
      const steps = values.filter((v) => v !== undefined).length;
      scope.textContent = "history over the " + steps.toLocaleString("en") + " of " + COUNT.toLocaleString("en") +
        " steps drawn with this graph shape";
      chart = makeChart(chartBox, {
        series: [{ name: "norm", values: values, color: "#8250df" }], log: true, height: 96,
        label: "gradient norm history", empty: "no gradient reached this node",
      });
      self.highlight();
      self.update(player.pos());
    };

    self.close = function () {
      if (box.contains(document.activeElement)) viewport.focus();   // keys keep working once it is hidden
      self.node = null;
      self.layout = -1;
      box.hidden = true;
      chart = null;
      self.highlight();
    };

    self.update = function (pos) {
      if (self.node === null || statsPending) return;
      chart.setPos(pos);
      const body = $("inspector-stats");
      body.textContent = "";
      const frame = FRAMES.at(pos);
      const here = frame[0] === self.layout;
      const i = here ? layouts[frame[0]].meta.painted.indexOf(self.node) : -1;
      const stats = i < 0 ? null : statsOf(frame[3], i);
      const row = (label, value, bad) => {
        const tr = htmlEl("tr", null, null, body);
        htmlEl("th", null, label, tr);
        htmlEl("td", bad ? "vg-bad" : null, value, tr);
      };
      row("step", String(XS[pos]));
      if (DATA.ranks) rankRows(pos, row);
      if (!stats || stats[0] === null) {
        row("gradient", !here ? "not in this step's graph shape" : i < 0 ? "not tracked (saved tensor)" : "none flowed here");
        return;
      }
      if (stats[6]) {
        row("‖g‖ coming in", fmt(stats[6][0]), typeof stats[6][0] === "string");
        row("‖g‖ passed on", fmt(stats[6][1]), typeof stats[6][1] === "string");
        row("largest ‖g‖ inside", fmt(stats[6][2]), typeof stats[6][2] === "string");
        return;
      }
      row("norm ‖g‖", fmt(stats[0]), typeof stats[0] === "string");
      row("mean", fmt(stats[1]), typeof stats[1] === "string");
      if (stats[7] !== undefined && stats[7] !== null) row("mean |g|", fmt(stats[7]), typeof stats[7] === "string");
      row("min", fmt(stats[2]), typeof stats[2] === "string");
      row("max", fmt(stats[3]), typeof stats[3] === "string");
      row("NaN count", String(stats[4]), stats[4] > 0);
      row("Inf count", String(stats[5]), stats[5] > 0);
    };

    /** The spread of the node's gradient norm across the ranks of a distributed job, and each rank's. */
    function rankRows(pos, row) {
      const per = DATA.ranks.present.map((k) => {
        const F = ranks.frames(k);
        if (pos >= F.length || F.layoutAt(pos) !== self.layout) return [k, undefined];
        const j = layouts[self.layout].meta.painted.indexOf(self.node);
        return [k, j < 0 ? undefined : num(statsOf(F.at(pos)[3], j)[0])];
      });
      const known = per.map((p) => p[1]).filter((v) => typeof v === "number").sort((a, b) => a - b);
      if (!known.length) return;
      const mid = known.length % 2 ? known[(known.length - 1) / 2] : (known[known.length / 2 - 1] + known[known.length / 2]) / 2;
      row("ranks: min · median · max", fmt(known[0]) + " · " + fmt(mid) + " · " + fmt(known[known.length - 1]));
      per.forEach(([k, v]) => row("rank " + k + " ‖g‖", v === undefined ? "–" : fmt(v)));
    }

    self.rerender = function () { if (chart) { chart.render(); chart.setPos(player.pos()); } };
    $("inspector-close").addEventListener("click", self.close);
    return self;
  })();

  // ------------------------------------------------------------------ side charts
  const charts = [];

  // A log axis cannot show a zero or negative loss (a WGAN critic's): then the axis is linear.
  const lossLog = !DATA.loss.some((v) => typeof v === "number" && v <= 0);
  $("loss-scale").textContent = lossLog ? "log scale" : "linear scale";
  charts.push(makeChart($("loss-chart"), {
    series: [{ name: "loss", values: DATA.loss, color: "#0969da" }], log: lossLog, height: 130,
    markerId: "loss-marker", label: "loss over steps (" + (lossLog ? "log" : "linear") + " scale)", xTitle: "step",
    empty: "no scalar loss recorded",
  }));

  // With optimizer iterations of several steps, or several losses (a GAN's errD_real, errD_fake, errG):
  // one curve per loss name, each point an iteration's loss of that name summed over its steps.
  (function iterationLosses() {
    const loop = DATA.loop;
    if (!loop) return;
    const card = $("iteration-card");
    card.hidden = false;
    const series = loop.losses.map((curve, k) => {
      const values = new Array(COUNT).fill(undefined);
      curve.at.forEach((frame, i) => { values[frame] = curve.values[i]; });
      return { name: curve.name === null ? "loss" : curve.name, values: values, color: SERIES_COLORS[k % SERIES_COLORS.length] };
    });
    const all = series.flatMap((s) => s.values.filter((v) => typeof v === "number"));
    const log = all.length > 0 && !all.some((v) => v <= 0);
    $("iteration-scale").textContent = (log ? "log" : "linear") + " scale, by iteration";
    const legend = $("iteration-legend");
    series.forEach((s) => {
      const item = htmlEl("span", "vg-series", null, legend);
      htmlEl("span", "vg-swatch", null, item).style.background = s.color;
      htmlEl("span", null, s.name, item);
      item.setAttribute("data-loss", s.name);
    });
    charts.push(makeChart($("iteration-chart"), {
      series: series, log: log, height: 130, xs: loop.iteration, xTitle: "iteration (optimizer.step())",
      label: "loss of each iteration by loss name", empty: "no scalar loss recorded",
    }));
  })();

  // Hand-written gradients (run.expect_grad) against autograd's: both norms per parameter, by step.
  (function manualGradients() {
    const M = DATA.manual;
    if (!M) return;
    $("manual-card").hidden = false;
    const box = $("manual");
    M.names.forEach((name) => {
      const S = M.series[name];
      const ratios = S.ratio.filter((r) => typeof r === "number");
      const same = ratios.length > 0 && ratios.every((r) => Math.abs(r - ratios[0]) <= 1e-4 * Math.abs(ratios[0]));
      const head = htmlEl("div", "vg-param-name", name + (ratios.length ? (same ? " · hand-written = " + fmt(ratios[0]) + " × autograd"
        : " · ratio " + fmt(Math.min(...ratios)) + " … " + fmt(Math.max(...ratios))) : ""), box);
      head.setAttribute("data-manual", name);
      const chart = htmlEl("div", "vg-chart", null, box);
      const undef = (values) => values.map((v) => (v === null ? undefined : v));
      charts.push(makeChart(chart, {
        series: [{ name: "hand-written", values: undef(S.manual), color: "#cf222e" },
          { name: "autograd", values: undef(S.autograd), color: "#0969da" }],
        log: !S.manual.concat(S.autograd).some((v) => typeof v === "number" && v <= 0), height: 100,
        label: "hand-written and autograd gradient norms of " + name, xTitle: "step", empty: "not checked on the shown steps",
      }));
    });
  })();

  // ------------------------------------------------------------------ gradient flow: layers by steps
  const flow = (function () {
    const F = DATA.flow, card = $("flow-card");
    const none = { setPos: () => {}, render: () => {}, rows: () => 0, focus: () => false, cell: () => null };
    if (!F || !F.names.length) return none;
    card.hidden = false;
    const R = F.names.length, S = F.steps;
    const span = F.hi - F.lo;
    /** uint16 codes (see health.log_codes) to values: NaN for no gradient, Infinity for NaN/Inf, 0 for zero. */
    function decode(b64) {
      const bin = atob(b64), out = new Float64Array(bin.length / 2);
      for (let i = 0; i < out.length; i++) {
        const c = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8);
        out[i] = c === 0 ? NaN : c === 1 ? 0 : c === 65535 ? Infinity : Math.pow(10, F.lo + ((c - 2) / 65532) * span);
      }
      return out;
    }
    const NORM = decode(F.norm), MAX = decode(F.max), MEAN = F.mean ? decode(F.mean) : null;   // no mean: an old run file
    const depthSelect = $("flow-depth"), measureSelect = $("flow-measure"), box = $("flow"), readout = $("flow-readout");
    const groupings = F.depths.length ? F.depths : [{ depth: null, names: F.names, group: F.names.map((_, r) => r) }];
    groupings.forEach((g, at) => {
      const label = g.depth === null ? (F.by === "param" ? "parameters" : "finest") : at === groupings.length - 1 ? "finest" : "depth " + g.depth;
      const option = htmlEl("option", null, label, depthSelect);
      option.value = String(at);
    });
    depthSelect.value = String(clamp(F.depth, 0, groupings.length - 1));
    if (!MEAN) measureSelect.querySelector('option[value="mean"]').remove();
    measureSelect.value = F.measure === "norm" ? "norm" : "rms";   // as the graph's colours, to begin with
    const BAR = MEAN ? "mean" : "rms", BAR_NAME = MEAN ? "mean |grad|" : "RMS |grad|";   // the bars' dark part
    depthSelect.parentElement.hidden = groupings.length < 2;
    $("flow-sub").textContent = (F.by === "module" ? "per module" : "per parameter") + ", of .grad after each backward()";

    /** One grouping's numbers per step and row: norm (norms add in squares), RMS (norm / sqrt(elements)),
        mean |grad| (means weighted by elements) and max. */
    let table = null;
    function aggregate(at) {
      const g = groupings[at], G = g.names.length, cells = S * G;
      const norm = new Float64Array(cells).fill(NaN), max = new Float64Array(cells).fill(NaN), rms = new Float64Array(cells).fill(NaN);
      const mean = new Float64Array(cells).fill(NaN), counted = new Float64Array(cells);
      const numel = new Float64Array(G);
      g.group.forEach((k, r) => { numel[k] += F.numel[r] || 0; });
      for (let s = 0; s < S; s++) {
        for (let r = 0; r < R; r++) {
          const v = NORM[s * R + r];
          if (Number.isNaN(v)) continue;
          const i = s * G + g.group[r], m = MAX[s * R + r];
          norm[i] = Number.isNaN(norm[i]) ? v * v : norm[i] + v * v;
          max[i] = Number.isNaN(max[i]) || m > max[i] ? m : max[i];
          const a = MEAN ? MEAN[s * R + r] : NaN, n = F.numel[r] || 0;
          if (!Number.isNaN(a) && n > 0) {
            mean[i] = (Number.isNaN(mean[i]) ? 0 : mean[i]) + (a === Infinity ? Infinity : a * n);
            counted[i] += n;
          }
        }
        for (let k = 0; k < G; k++) {
          const i = s * G + k;
          norm[i] = Math.sqrt(norm[i]);
          rms[i] = numel[k] > 0 ? norm[i] / Math.sqrt(numel[k]) : NaN;
          if (counted[i] > 0) mean[i] /= counted[i];
        }
      }
      const isParam = g.names.map((name) => F.names.some((n, r) => n === name && F.params[r]));
      table = { names: g.names, G: G, norm: norm, rms: rms, mean: mean, max: max, isParam: isParam };
      const a = logRange(table[BAR]), b = logRange(max);   // the bars' log scale, over every step
      table.barRange = [Math.min(a[0], b[0]), Math.max(a[1], b[1])];
    }

    const logRange = (values) => {
      let lo = Infinity, hi = -Infinity;
      for (const v of values) if (v > 0 && v < Infinity) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
      return lo <= hi ? [Math.log10(lo), Math.log10(hi)] : [0, 0];
    };
    const shown = () => table[measureSelect.value];
    const MEASURE_NAMES = { rms: "RMS |grad|", mean: "mean |grad|", norm: "‖grad‖" };
    const ramp = F.colors.ramp;
    const hex = (c) => [parseInt(c.slice(1, 3), 16), parseInt(c.slice(3, 5), 16), parseInt(c.slice(5, 7), 16)];
    const RAMP = ramp.map(hex), BAD = hex(F.colors.nan), ZERO = hex(F.colors.zero), NONE = [246, 248, 250];

    let canvas = null, marker = null, heatBox = null, labels = [], bars = [], columns = 0, range = [0, 0], rowHeight = 8;
    /** Draws the rows of the current grouping: labels, the heatmap (one pixel column per bucket of steps) and bars. */
    function render() {
      box.textContent = "";
      const G = table.G;
      rowHeight = clamp(Math.floor(360 / G), 3, 14);
      box.style.gridTemplateColumns = (rowHeight >= 9 ? "104px" : "0") + " minmax(0, 1fr) 58px";
      const labelBox = htmlEl("div", "vg-flow-labels", null, box);
      heatBox = htmlEl("div", "vg-flow-heat-box", null, box);
      const barBox = htmlEl("div", "vg-flow-bars", null, box);
      labels = table.names.map((name, k) => {
        const row = htmlEl("div", "vg-flow-label", null, labelBox);
        htmlEl("span", null, rowHeight >= 9 ? name || "(model)" : "", row);
        row.style.height = rowHeight + "px";
        row.title = (name || "(model)") + " — click to find it in the graph";
        row.setAttribute("data-layer", name);
        row.addEventListener("click", () => focus(k));
        return row;
      });
      bars = table.names.map((name, k) => {
        const bar = htmlEl("div", "vg-flow-bar", null, barBox);
        bar.style.height = rowHeight + "px";
        bar.title = name || "(model)";
        const maxBar = htmlEl("span", "vg-flow-max", null, bar), midBar = htmlEl("span", "vg-flow-mid", null, bar);
        bar.addEventListener("click", () => focus(k));
        return [bar, maxBar, midBar];
      });
      canvas = htmlEl("canvas", "vg-flow-heat", null, heatBox);
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", "gradient " + measureSelect.value + " per layer (rows) and step (columns), log colour scale");
      marker = htmlEl("div", "vg-flow-marker", null, heatBox);
      const width = Math.max(40, heatBox.clientWidth || 180);
      columns = Math.min(S, Math.round(width));
      canvas.width = columns;
      canvas.height = G;
      canvas.style.height = G * rowHeight + "px";
      const values = shown();
      range = logRange(values);
      const image = canvas.getContext("2d").createImageData(columns, G);
      const lo = range[0], width10 = range[1] - range[0] || 1;
      for (let c = 0; c < columns; c++) {
        const a = Math.floor((c * S) / columns), b = Math.max(a + 1, Math.floor(((c + 1) * S) / columns));
        for (let k = 0; k < G; k++) {
          let logSum = 0, count = 0, bad = false, zero = false;
          for (let s = a; s < b; s++) {   // a bucket's colour: the geometric mean; NaN/Inf wins, then zero
            const v = values[s * G + k];
            if (v === Infinity) bad = true;
            else if (v === 0) zero = true;
            else if (v > 0) { logSum += Math.log10(v); count++; }
          }
          const rgb = bad ? BAD : count ? RAMP[clamp(Math.round(((logSum / count - lo) / width10) * (RAMP.length - 1)), 0, RAMP.length - 1)]
            : zero ? ZERO : NONE;
          const p = (k * columns + c) * 4;
          image.data[p] = rgb[0]; image.data[p + 1] = rgb[1]; image.data[p + 2] = rgb[2]; image.data[p + 3] = 255;
        }
      }
      canvas.getContext("2d").putImageData(image, 0, 0);
      const axis = htmlEl("div", "vg-flow-axis", null, box);
      htmlEl("span", null, "step " + XS[0], axis);
      htmlEl("span", null, String(XS[S - 1]), axis);
      htmlEl("div", "vg-flow-key", "now", box).title = "this step: " + BAR_NAME + " (dark) and max |grad| (light), log scale";
      const key = htmlEl("div", "vg-flow-scale", null, box);
      htmlEl("span", null, fmt(Number(Math.pow(10, range[0]).toPrecision(2))), key);
      const strip = htmlEl("span", "vg-flow-strip", null, key);
      strip.style.background = "linear-gradient(to right, " + ramp.join(", ") + ")";
      htmlEl("span", null, fmt(Number(Math.pow(10, range[1]).toPrecision(2))), key);
      htmlEl("span", "vg-flow-scale-name", MEASURE_NAMES[measureSelect.value] + ", log", key);
      canvas.addEventListener("mousemove", (e) => { const at = cellAt(e); if (at) say(at[0], at[1]); });
      canvas.addEventListener("mouseleave", () => say(null));
      canvas.addEventListener("click", (e) => {
        const at = cellAt(e);
        if (!at) return;
        player.pause();
        player.seek(at[1]);
        focus(at[0]);
        hash.write();
      });
      setPos(lastPos);
    }

    /** [row, step position] under a pointer event on the heatmap. */
    function cellAt(e) {
      const r = canvas.getBoundingClientRect();
      if (r.width <= 0 || r.height <= 0) return null;
      const k = clamp(Math.floor(((e.clientY - r.top) / r.height) * table.G), 0, table.G - 1);
      const c = clamp(Math.floor(((e.clientX - r.left) / r.width) * columns), 0, columns - 1);
      const a = Math.floor((c * S) / columns), b = Math.max(a + 1, Math.floor(((c + 1) * S) / columns));
      return [k, Math.floor((a + b - 1) / 2)];
    }

    const value = (array, s, k) => { const v = array[s * table.G + k]; return Number.isNaN(v) ? "no gradient" : v === Infinity ? "NaN/Inf" : fmt(v); };
    function say(k, s) {
      if (k === null) { readout.textContent = ""; return; }
      const pos = s === undefined ? lastPos : s;
      readout.textContent = (table.names[k] || "(model)") + " · step " + XS[pos] + (MEAN ? " · mean |g| " + value(table.mean, pos, k) : "") +
        " · RMS " + value(table.rms, pos, k) + " · ‖g‖ " + value(table.norm, pos, k) + " · max |g| " + value(table.max, pos, k);
    }

    let lastPos = 0;
    function setPos(pos) {
      lastPos = pos;
      if (!canvas) return;
      marker.style.left = ((pos + 0.5) / S) * 100 + "%";
      const mid = table[BAR], lo = table.barRange[0], hi = table.barRange[1];
      const scale = (v) => (v > 0 && v < Infinity ? clamp((Math.log10(v) - lo) / (hi - lo || 1), 0.02, 1) * 100 : 0);
      bars.forEach(([bar, maxBar, midBar], k) => {
        const m = table.max[pos * table.G + k], v = mid[pos * table.G + k];
        bar.classList.toggle("vg-bad", m === Infinity || v === Infinity);
        maxBar.style.width = (m === Infinity ? 100 : scale(m)) + "%";
        midBar.style.width = (v === Infinity ? 100 : scale(v)) + "%";
      });
    }

    /** The element drawing module `path`: its box, a fold holding it (`h.0-11`, `cell@0-999`), a box of one
        of its calls (`cell@3`), or its open frame; null when none is on screen. */
    function drawnAs(path) {
      const quoted = CSS.escape(path);
      const box = graphOne('g.vg-node[data-module="' + quoted + '"]');
      if (box) return box;
      for (const fold of graphAll("g.vg-fold[data-module]")) {
        const key = fold.getAttribute("data-module");
        const siblings = /^(.*)\.(\d+)-(\d+)$/.exec(key), calls = /^(.*)@(\d+)-(\d+)$/.exec(key);
        if (calls && (path === calls[1] || path.startsWith(calls[1] + "."))) return fold;
        if (siblings && path.startsWith(siblings[1] + ".")) {
          const number = Number(path.slice(siblings[1].length + 1).split(".")[0]);
          if (number >= Number(siblings[2]) && number <= Number(siblings[3])) return fold;
        }
      }
      return graphOne('g.vg-node[data-module^="' + quoted + '@"]') ||
        graphOne('g.vg-cluster[data-module="' + quoted + '"]');
    }

    /** Finds layer `k` in the graph on screen: its box, the drawn box around it, or its first node. */
    function focus(k) {
      const name = table.names[k];
      graphAll(".vg-flow-focus").forEach((el) => el.classList.remove("vg-flow-focus"));
      if (mounted < 0) return false;
      const meta = layouts[mounted].meta;
      let target = null;
      if (table.isParam[k]) {
        const leaf = meta.nodes.find((n) => n[2] === "leaf" && n[3] === name);
        target = leaf ? graphOne('[data-node="' + CSS.escape(leaf[0]) + '"]') : null;
      } else {
        for (let path = name; target === null;) {   // the module, or the nearest module around it that is drawn
          target = drawnAs(path);
          const cut = path.lastIndexOf(".");
          if (target || cut < 0) break;
          path = path.slice(0, cut);
        }
        if (!target) {
          const inside = meta.nodes.find((n) => n[5] !== null && n[5] !== undefined && (n[5] === name || n[5].startsWith(name + ".")));
          target = inside ? graphOne('[data-node="' + CSS.escape(inside[0]) + '"]') : null;
        }
      }
      labels.forEach((row, j) => row.classList.toggle("vg-flow-focus", j === k));
      say(k);
      if (!target) return false;
      target.classList.add("vg-flow-focus");
      view.centerOn(target);
      if (target.classList.contains("vg-node")) inspector.open(target.getAttribute("data-node"));
      return true;
    }

    depthSelect.addEventListener("change", () => { aggregate(Number(depthSelect.value)); render(); });
    measureSelect.addEventListener("change", render);
    aggregate(Number(depthSelect.value));
    render();
    return {
      setPos: setPos, render: render, focus: (name) => { const k = table.names.indexOf(name); return k >= 0 && focus(k); },
      rows: () => table.G, names: () => table.names.slice(),
      cell: (name, pos) => {
        const k = table.names.indexOf(name), i = pos * table.G + k;
        return k < 0 ? null : { norm: table.norm[i], rms: table.rms[i], mean: MEAN ? table.mean[i] : null, max: table.max[i] };
      },
      /** The bars of step `pos`: what the dark part shows (mean |grad|, or RMS for an old run file) and max |grad|. */
      bars: (pos) => ({ shows: BAR, values: table.names.map((_, k) => [table[BAR][pos * table.G + k], table.max[pos * table.G + k]]) }),
    };
  })();
  charts.push(flow);

  (function parameterCharts() {
    const box = $("params");
    if (!DATA.params.length) {
      htmlEl("div", "vg-empty", "no named parameters", box);
      return;
    }
    const readouts = [];
    const addParam = (p, i) => {
      const wrap = htmlEl("div", "vg-param", null, box);
      wrap.setAttribute("data-param", p.name);
      const head = htmlEl("div", "vg-param-head", null, wrap);
      htmlEl("span", "vg-param-name", p.scalar ? p.name : "‖" + p.name + "‖", head).title = p.name;
      const value = htmlEl("span", "vg-param-value", "", head);
      readouts.push([value, p.values]);
      charts.push(makeChart(htmlEl("div", "vg-chart", null, wrap), {
        series: [{ name: p.name, values: p.values, color: SERIES_COLORS[(i + 1) % SERIES_COLORS.length] }],
        height: 70, label: p.name,
      }));
      if (!p.grads || !p.grads.some((g) => g !== null)) return;
      // Its gradient beside it: ‖.grad‖ after each backward(), and the update ratio where the optimizer is known.
      const series = [{ name: "‖grad‖", values: p.grads, color: "#8250df" }];
      const gradHead = htmlEl("div", "vg-param-head vg-param-grad", null, wrap);
      htmlEl("span", "vg-param-name", "‖grad‖" + (p.update ? " · update lr·‖g‖/‖p‖" : ""), gradHead);
      const gradValue = htmlEl("span", "vg-param-value", "", gradHead);
      let ratios = null;
      if (p.update) {
        ratios = new Array(COUNT).fill(undefined);
        p.update.at.forEach((frame, k) => { ratios[frame] = p.update.values[k]; });
        series.push({ name: "update ratio", values: ratios, color: "#bc4c00" });
      }
      if (p.clipped) {   // the gradient after clip_grad_norm_ / clip_grad_value_, on the steps it ran
        const after = new Array(COUNT).fill(undefined);
        p.clipped.at.forEach((frame, k) => { after[frame] = p.clipped.values[k]; });
        series.push({ name: "after clipping", values: after, color: "#1a7f37" });
      }
      readouts.push([gradValue, p.grads, ratios]);
      charts.push(makeChart(htmlEl("div", "vg-chart", null, wrap), {
        series: series, log: true, height: 60, label: p.name + " gradient norm" + (p.update ? " and update ratio" : ""),
      }));
    };
    DATA.params.slice(0, PARAMS_SHOWN).forEach(addParam);
    const total = DATA.params.length + (DATA.params_later || 0);   // a big report sends the rest in a part
    if (total > PARAMS_SHOWN) {
      const more = htmlEl("button", "vg-more", "show all " + total + " parameters", box);
      more.type = "button";
      more.addEventListener("click", async () => {
        more.disabled = true;
        const later = DATA.params_later ? (await dataPart("params")).params : [];
        more.remove();
        DATA.params.slice(PARAMS_SHOWN).concat(later).forEach((p, i) => addParam(p, i + PARAMS_SHOWN));
        player.seek(player.pos());
      });
    }
    /** The update ratio of the iteration a frame is in: at its last frame, so the nearest one on or after `pos`. */
    const ratioAt = (ratios, pos) => {
      for (let k = pos; k < COUNT; k++) if (ratios[k] !== undefined) return ratios[k];
      return undefined;
    };
    charts.push({ render: () => {}, setPos: (pos) => readouts.forEach(([el, values, ratios]) => {
      const ratio = ratios ? ratioAt(ratios, pos) : undefined;
      el.textContent = fmt(values[pos]) + (ratio !== undefined ? " · " + fmt(ratio) : "");
    }) });
  })();

  (function userPanels() {
    const box = $("panels");
    DATA.panels.forEach((spec) => {
      const card = htmlEl("section", "vg-card", null, box);
      htmlEl("h2", null, spec.title, card);
      const area = htmlEl("div", "vg-chart", null, card);
      if (spec.kind === "scatter_line") {
        charts.push(makeChart(area, { scatter: spec, height: 190, xTitle: spec.xLabel, yTitle: spec.yLabel, label: spec.title }));
      } else if (spec.kind === "series") {
        charts.push(makeChart(area, {
          series: spec.series.map((s) => ({ name: s.name, values: s.values })), log: spec.log, height: 110,
          xTitle: spec.series.map((s) => s.name).join(", "), label: spec.title,
        }));
      } else {
        htmlEl("div", "vg-empty", "unknown panel kind: " + spec.kind, area);
      }
    });
  })();

  (function colorbar() {
    const bar = DATA.colorbar || {};
    const box = $("colorbar");
    const width = 250, height = 30;
    const svg = svgEl("svg", { width: width, height: height, role: "img", "aria-label": "colour scale of gradient norms" }, box);
    const grad = svgEl("linearGradient", { id: "vg-colorbar-gradient", x1: 0, x2: 1, y1: 0, y2: 0 }, svgEl("defs", {}, svg));
    const stops = bar.stops || [];
    stops.forEach(([offset, color]) => {   // [offset, colour] pairs from colors.colorbar()
      svgEl("stop", { offset: String(offset), "stop-color": color }, grad);
    });
    svgEl("rect", { x: 4, y: 2, width: width - 8, height: 10, rx: 2, fill: "url(#vg-colorbar-gradient)", stroke: "#d1d9e0" }, svg);
    const axis = svgEl("g", { class: "vg-axis" }, svg);
    let lastLabel = -Infinity;
    let ticks = bar.ticks || [];
    if (ticks.length < 2 && typeof bar.lo === "number" && typeof bar.hi === "number") {
      // Less than a decade: label the two ends too.
      ticks = [[0, fmt(Number(Math.pow(10, bar.lo).toPrecision(2)))], ...ticks,
        [1, fmt(Number(Math.pow(10, bar.hi).toPrecision(2)))]];
    }
    ticks.forEach((t) => {
      const at = t[0];   // [offset, label] pairs
      let label = String(t[1]);
      const decade = /^1e([+-]?\d+)$/.exec(label);
      if (decade) label = decadeLabel(Number(decade[1]));
      const x = 4 + clamp(Number(at), 0, 1) * (width - 8);
      svgEl("line", { x1: x, x2: x, y1: 12, y2: 15, stroke: "#8c959f" }, axis);
      const text = svgEl("text", { x: x, y: 25, "text-anchor": "middle" }, axis);
      text.textContent = label;
      const w = text.getComputedTextLength() + 6;  // with a gap
      const anchor = x - w / 2 < 0 ? "start" : x + w / 2 > width ? "end" : "middle";
      text.setAttribute("text-anchor", anchor);
      const left = anchor === "start" ? x : anchor === "end" ? x - w : x - w / 2;
      if (left < lastLabel) { text.remove(); return; }   // no room: keep the tick, drop the label
      lastLabel = left + w;
    });
  })();

  // torch.autograd.grad calls before a step's backward() (record(grad_calls=True)): each drawn on its own graph.
  const calls = (function () {
    const C = DATA.calls, card = $("calls-card");
    if (!C) return { update: () => {}, show: async () => false, shown: () => null };
    const FR = framesOf(C.segments), list = $("calls");
    let shown = null;
    async function show(number) {
      if (number === null) { shown = null; paint(player.pos()); mark(); return true; }
      if (!(number >= 0 && number < FR.length)) return false;
      await inflateLayout(FR.layoutAt(number));
      shown = number;
      paintFrame(FR.at(number));
      mark();
      return true;
    }
    function mark() {
      list.querySelectorAll("button").forEach((b) => {
        b.setAttribute("aria-pressed", String(b.dataset.call === "" ? shown === null : Number(b.dataset.call) === shown));
      });
    }
    function update(pos) {
      shown = null;
      const numbers = C.of[pos] || [];
      card.hidden = numbers.length === 0;
      list.textContent = "";
      if (!numbers.length) return;
      const back = htmlEl("button", "vg-call", "backward() graph", list);
      back.type = "button";
      back.dataset.call = "";
      back.addEventListener("click", () => show(null));
      numbers.forEach((number, k) => {
        const button = htmlEl("button", "vg-call", "autograd.grad " + (k + 1) + (C.names[number] ? " of " + C.names[number] : ""), list);
        button.type = "button";
        button.dataset.call = String(number);
        button.addEventListener("click", () => show(number));
      });
      mark();
    }
    return { update: update, show: show, shown: () => shown };
  })();

  // Steps followed by a gradient clip, by frame.
  const clipAt = new Map();
  if (DATA.clips) DATA.clips.at.forEach((frame, k) => clipAt.set(frame, {
    function: DATA.clips.function[k], limit: DATA.clips.limit[k], before: DATA.clips.before[k], after: DATA.clips.after[k],
  }));

  // ------------------------------------------------------------------ player
  const player = (function () {
    const slider = $("slider"), playButton = $("play"), speed = $("speed");
    let pos = 0, playing = false, last = 0, carry = 0;

    // Default speed: the whole run in about 20 seconds.
    const rates = Array.from(speed.options).map((o) => Number(o.value));
    speed.value = String(rates.reduce((best, r) => (Math.abs(r - COUNT / 20) < Math.abs(best - COUNT / 20) ? r : best), rates[0]));

    function seek(p) {
      pos = clamp(Math.round(p), 0, COUNT - 1);
      slider.value = String(pos);
      paint(pos);
      const label = $("step-label");
      label.textContent = String(XS[pos]);
      label.setAttribute("data-step", String(XS[pos]));
      const loss = $("loss-value");
      const losses = ranks.picked() === null ? DATA.loss : DATA.ranks.loss[String(ranks.picked())];   // a rank's own
      loss.textContent = fmt(losses[pos]);
      loss.classList.toggle("vg-bad", typeof losses[pos] === "string");   // NaN or Inf
      if (DATA.loop) $("iteration-label").textContent = String(DATA.loop.iteration[pos]);
      calls.update(pos);
      const clip = clipAt.get(pos), badge = $("clip-badge");
      badge.hidden = !clip;
      if (clip) {
        badge.textContent = (clip.after < clip.before * (1 - 1e-6) ? "clipped " : "clip ran ") +
          "‖g‖ " + fmt(clip.before) + " → " + fmt(clip.after);
        badge.title = clip.function + (clip.limit !== null ? " with limit " + fmt(clip.limit) : "") +
          " after this step's backward(): the gradients shown are before it";
      }
      $("step-counter").textContent = (pos + 1).toLocaleString("en") + " / " + COUNT.toLocaleString("en");
      charts.forEach((c) => c.setPos(pos));
      inspector.update(pos);
    }

    function tick(now) {
      if (!playing) return;
      carry += ((now - last) / 1000) * Number(speed.value);
      last = now;
      const n = Math.floor(carry);
      if (n > 0) {
        carry -= n;
        seek(Math.min(COUNT - 1, pos + n));
        if (pos >= COUNT - 1) { pause(); return; }
      }
      requestAnimationFrame(tick);
    }

    function play() {
      if (COUNT < 2) return;
      if (pos >= COUNT - 1) seek(0);
      playing = true;
      playButton.setAttribute("aria-pressed", "true");
      playButton.setAttribute("aria-label", "Pause");
      last = performance.now();
      carry = 0;
      requestAnimationFrame(tick);
    }

    function pause() {
      playing = false;
      playButton.setAttribute("aria-pressed", "false");
      playButton.setAttribute("aria-label", "Play");
    }

    const toggle = () => (playing ? pause() : play());
    playButton.addEventListener("click", toggle);
    slider.addEventListener("input", () => { pause(); seek(Number(slider.value)); });
    $("prev").addEventListener("click", () => { pause(); seek(pos - 1); });
    $("next").addEventListener("click", () => { pause(); seek(pos + 1); });
    $("first").addEventListener("click", () => { pause(); seek(0); });
    $("last").addEventListener("click", () => { pause(); seek(COUNT - 1); });

    document.addEventListener("keydown", (e) => {
      if (e.altKey || e.ctrlKey || e.metaKey) return;
      const tag = e.target && e.target.tagName;
      if (tag === "SELECT" || tag === "TEXTAREA" || (tag === "INPUT" && e.target.type !== "range")) return;
      const onSlider = e.target === slider;
      const big = e.shiftKey ? 10 : 1;
      switch (e.key) {
        case "ArrowLeft": if (onSlider) return; pause(); seek(pos - big); break;
        case "ArrowRight": if (onSlider) return; pause(); seek(pos + big); break;
        case "Home": if (onSlider) return; pause(); seek(0); break;
        case "End": if (onSlider) return; pause(); seek(COUNT - 1); break;
        case " ": case "k": if (tag === "BUTTON" && e.key === " ") return; toggle(); break;
        case "+": case "=": view.zoomCenter(1.25); break;
        case "-": view.zoomCenter(0.8); break;
        case "0": view.reset(); break;
        case "Escape": inspector.close(); break;
        default: return;
      }
      e.preventDefault();
    });

    return { seek: seek, play: play, pause: pause, pos: () => pos, playing: () => playing };
  })();

  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      charts.forEach((c) => c.render());
      inspector.rerender();
      player.seek(player.pos());
    }, 150);
  });

  // ------------------------------------------------------------------ views: expand, collapse, unfold
  const views = (function () {
    const notice = $("view-notice");
    let noticeTimer = 0;

    function say(text) {
      notice.textContent = text;
      notice.hidden = !text;
      clearTimeout(noticeTimer);
      if (text) noticeTimer = setTimeout(() => { notice.hidden = true; }, 4000);
    }

    /** Whether `name` names `key`: in full, or as its end after a dot (h.3 names model.h.3). */
    const names = (name, key) => key === name || key.endsWith("." + name);
    /** The key among `keys` that `name` names: itself first, else one it is the end of. */
    const byName = (keys, name) => { const all = [...keys]; return all.find((k) => k === name) ?? all.find((k) => names(name, k)); };

    /** The nearest prepared view (fewest clicks from the current one) where `wanted(view)` holds. */
    function nearest(wanted) {
      const seen = new Set([currentView]);
      const queue = [currentView];
      while (queue.length) {
        const v = queue.shift();
        if (wanted(v)) return v;
        for (const action in VIEWS[v].next) {
          for (const w of Object.values(VIEWS[v].next[action])) {
            if (!seen.has(w)) { seen.add(w); queue.push(w); }
          }
        }
      }
      return -1;
    }

    /** The drawn items of view v (its layouts for the current step's graph shape). */
    function drawnIn(v) {
      const frames = framesOfView(v);
      return layouts[frames.layoutAt(player.pos())].meta;
    }
    const openIn = (v, name) => (VIEWS[v].open || []).some((key) => names(name, key));
    const boxedIn = (v, name) => drawnIn(v).nodes.some((n) => (n[2] === "module" || n[2] === "fold") && n[3] !== null && names(name, n[3]));

    /** Shows view v, keeping the item `anchor` (a module key) where it was on screen. */
    async function show(v, anchor) {
      if (v === currentView) return true;
      let before = null;
      const L = mounted >= 0 ? layouts[mounted] : null;
      const element = anchor && L && L.modules ? L.modules.get(anchor) : null;
      if (element) before = view.centerOf(element);
      try {
        await inflateLayouts(v);
        await loadColumns(v);
      } catch (error) {
        say("this browser cannot open the other views (" + error.message + ")");
        return false;
      }
      currentView = v;
      FRAMES = framesOfView(v);
      ranks.reset();   // other ranks are drawn in the first view only
      player.seek(player.pos());
      const now = layouts[mounted];
      const found = anchor && now.modules ? byName(now.modules.keys(), anchor) : undefined;
      const after = found !== undefined ? now.modules.get(found) : null;
      if (before && after) {
        const moved = view.centerOf(after);
        view.panBy(before.x - moved.x, before.y - moved.y);
      }
      hash.write();
      return true;
    }

    /** The views where `action` on `name` has been done: it is open, closed, or its fold is unfolded. */
    function doneIn(action, name) {
      if (action === "expand") return (v) => openIn(v, name);
      if (action === "collapse") return (v) => !openIn(v, name) && boxedIn(v, name);
      const unfolded = (k) => names(name, k) || k.startsWith(name + ".") || k.startsWith(name + "@") ||
        k.includes("." + name + ".");   // a fold's key, or its module or container
      return (v) => VIEWS[v].unfold.some(unfolded);
    }

    /** Runs `action` on the module `name`: straight to a prepared view, else through the fewest clicks. */
    async function act(action, name) {
      const moves = VIEWS[currentView].next[action] || {};
      const key = byName(Object.keys(moves), name);
      if (key !== undefined) return show(moves[key], key);
      const done = doneIn(action, name);
      if (done(currentView)) return true;
      const target = nearest(done);
      if (target < 0) {
        say("no prepared view " + (action === "expand" ? "opens" : action === "collapse" ? "closes" : "unfolds") +
          " " + name + "; render with --" + action + " " + name + " to draw it");
        return false;
      }
      return show(target, name);
    }

    function click(element) {
      const key = element.getAttribute("data-module");
      if (element.classList.contains("vg-cluster")) return act("collapse", key);
      const kind = element.classList.contains("vg-fold") ? "unfold" : "expand";
      return act(kind, key);
    }

    $("overview").addEventListener("click", () => { show(0); });
    return {
      click: click, act: act, show: show, say: say,
      current: () => currentView,
      state: () => {
        const V = VIEWS[currentView];
        return { step: XS[player.pos()], view: currentView, expanded: V.expand.slice(), collapsed: V.collapse.slice(),
          unfolded: V.unfold.slice(), visible: drawnIn(currentView).nodes.length };
      },
    };
  })();

  // ------------------------------------------------------------------ the URL hash: step, view and focus
  const hash = (function () {
    // Keys are encoded one by one and joined by commas: a key may hold a comma, and the root module's is "".
    const decode = (text) => { try { return decodeURIComponent(text); } catch (error) { return text; } };   // a bad link
    const list = (raw) => (raw === undefined ? [] : raw.split(",").map(decode));
    const same = (a, b) => a.length === b.length && a.slice().sort().every((x, i) => x === b.slice().sort()[i]);
    let writing = false;

    function read() {
      const raw = {};   // each parameter's value as written (not decoded: its commas split keys)
      for (const part of location.hash.replace(/^#/, "").split("&")) {
        const at = part.indexOf("=");
        if (at > 0) raw[decode(part.slice(0, at))] = part.slice(at + 1);
      }
      const params = { has: (name) => name in raw, get: (name) => (name in raw ? decode(raw[name]) : null) };
      const expand = list(raw.expand), collapse = list(raw.collapse), unfold = list(raw.unfold);
      const v = VIEWS.findIndex((V) => same(V.expand, expand) && same(V.collapse, collapse) && same(V.unfold, unfold));
      const step = Number(params.get("step"));
      const pos = params.has("step") ? XS.findIndex((x) => x === step) : -1;
      return { view: v, expand: expand, collapse: collapse, unfold: unfold, pos: pos, focus: params.get("focus"),
        rank: params.has("rank") ? Number(params.get("rank")) : null };
    }

    /** Reaches the view a link names by its clicks, when it is not one of the prepared views as it is. */
    async function replay(target) {
      const outer = (a, b) => a.split(".").length - b.split(".").length;   // open the outer modules first
      const clicks = [...target.unfold.map((k) => ["unfold", k]), ...target.expand.slice().sort(outer).map((k) => ["expand", k]),
        ...target.collapse.map((k) => ["collapse", k])];
      for (const [action, key] of clicks) {
        if (!(await views.act(action, key))) return false;
      }
      return true;
    }

    function write() {
      if (writing) return;
      const V = VIEWS[currentView];
      const parts = ["step=" + XS[player.pos()]];
      if (V.expand.length) parts.push("expand=" + V.expand.map(encodeURIComponent).join(","));
      if (V.collapse.length) parts.push("collapse=" + V.collapse.map(encodeURIComponent).join(","));
      if (V.unfold.length) parts.push("unfold=" + V.unfold.map(encodeURIComponent).join(","));
      if (inspector.node !== null) parts.push("focus=" + encodeURIComponent(inspector.node));
      if (ranks.picked() !== null) parts.push("rank=" + ranks.picked());
      try { history.replaceState(null, "", "#" + parts.join("&")); } catch (error) { /* a sandboxed frame */ }
    }

    async function apply() {
      const target = read();
      writing = true;
      try {
        if (target.pos >= 0) player.seek(target.pos);
        if (target.view >= 0) {
          await views.show(target.view);
        } else if (!(await replay(target))) {
          await views.show(0);
          views.say("the view in the link was not prepared in this report; showing the first view");
        }
        if (target.rank !== null) await ranks.pick(target.rank);
        if (target.focus) inspector.open(target.focus);
      } finally {
        writing = false;
      }
    }

    window.addEventListener("hashchange", () => { apply(); });
    return { read: read, write: write, apply: apply };
  })();

  // ------------------------------------------------------------------ ranks of a distributed job: which one is drawn
  const ranks = (function () {
    const R = DATA.ranks;
    if (!R) return { pick: async () => false, picked: () => null, reset: () => {}, frames: () => null };
    const box = $("rank-box"), picker = $("rank-picker");
    box.hidden = false;
    const made = {};
    const frames = (k) => made[k] || (made[k] = framesOf(R.segments[String(k)]));
    const option = (value, text) => { const o = htmlEl("option", null, text, picker); o.value = value; };
    const missing = R.missing.length ? " (rank" + (R.missing.length > 1 ? "s " : " ") + R.missing.join(", ") + " missing)" : "";
    option("", "all: " + R.present.length + " of " + R.world_size + missing);
    R.present.forEach((k) => option(String(k), "rank " + k + (R.partial.includes(k) ? " (stopped early)" : "") +
      (R.hosts[String(k)] ? " · " + R.hosts[String(k)] : "")));
    let picked = null;
    /** Draws rank k's own gradients (null: the merged steps, rank R.reference's with the job's parameter norms). */
    async function pick(k) {
      if (k !== null && !R.present.includes(k)) return false;
      if (k !== null && currentView !== 0) await views.show(0);
      picked = k;
      picker.value = k === null ? "" : String(k);
      FRAMES = k === null ? framesOfView(currentView) : frames(k);
      player.seek(player.pos());
      hash.write();
      return true;
    }
    picker.addEventListener("change", () => { pick(picker.value === "" ? null : Number(picker.value)); });
    return { pick: pick, picked: () => picked, frames: frames, reset: () => { picked = null; picker.value = ""; } };
  })();

  // ------------------------------------------------------------------ findings: a click goes to the step and the node
  const findings = (function () {
    const F = DATA.findings || [], card = $("findings-card");
    if (!F.length) return { go: async () => false };
    card.hidden = false;
    $("findings-count").textContent = F.length + (F.length === 1 ? " finding" : " findings") + " · click one to see it";
    const list = $("findings");
    F.forEach((f, k) => {
      const button = htmlEl("button", "vg-finding vg-finding-" + f.kind, null, list);
      button.type = "button";
      button.dataset.finding = String(k);
      button.dataset.kind = f.kind;
      htmlEl("span", "vg-finding-kind", f.kind.replace("_", " "), button);
      htmlEl("span", "vg-finding-step", "step " + f.step + (f.count > 1 ? " ×" + f.count : ""), button);
      htmlEl("span", "vg-finding-text", f.message, button);
      if (f.where) htmlEl("span", "vg-finding-where", f.where, button);
      button.addEventListener("click", () => { go(k); });
    });

    /** The shown step nearest after `step` (a report of some steps may not show it). */
    function frameOf(step) {
      const exact = XS.indexOf(step);
      if (exact >= 0) return exact;
      const after = XS.findIndex((x) => x > step);
      return after >= 0 ? after : COUNT - 1;
    }

    /** Moves to finding k's step, opens its module (outer ones first) and highlights its node. */
    async function go(k) {
      const f = F[k];
      list.querySelectorAll("button").forEach((b, j) => b.setAttribute("aria-pressed", String(j === k)));
      player.pause();
      player.seek(frameOf(f.step));
      if (f.module) {
        const parts = f.module.split(".");
        for (let n = 1; n <= parts.length; n++) {
          const path = parts.slice(0, n).join(".");
          if (graphOne('[data-node="' + CSS.escape(f.node || "") + '"]')) break;
          if (!(await views.act("expand", path)) && n > 1) {   // inside a fold of repeats: open the repeats first
            await views.act("unfold", parts.slice(0, n - 1).join("."));
            await views.act("expand", path);
          }
        }
      }
      const target = f.node ? graphOne('[data-node="' + CSS.escape(f.node) + '"]') : null;
      if (target) {
        inspector.open(f.node);
        view.centerOn(target);
      }
      hash.write();
      return target !== null;
    }
    return { go: go };
  })();

  await inflateLayouts(0);   // a big report sends even its first view's layouts compressed
  player.seek(0);
  if (DATA.stats_later) statsPending = fillColumns("stats").finally(() => { statsPending = null; });
  const ready = hash.apply();
  let hashTimer = 0;
  const onStep = () => { clearTimeout(hashTimer); hashTimer = setTimeout(() => hash.write(), 250); };
  $("slider").addEventListener("change", onStep);
  document.addEventListener("keyup", onStep);

  window.vizgrad = {
    player: player, view: view, inspector: inspector, data: DATA, ready: ready,
    /** Moves to the run's step `n` (its index, as the step label shows). */
    step: (n) => { const pos = XS.indexOf(Number(n)); if (pos >= 0) { player.pause(); player.seek(pos); hash.write(); } return pos >= 0; },
    expand: (path) => views.act("expand", String(path)),
    collapse: (path) => views.act("collapse", String(path)),
    unfold: (path) => views.act("unfold", String(path)),
    overview: () => views.show(0),
    flow: flow,
    /** Goes to finding k (0-based, as listed): its step, its module opened, its node highlighted. */
    finding: (k) => findings.go(Number(k)),
    /** Draws rank k's gradients (a merged distributed run), or the merged steps for null. */
    rank: (k) => ranks.pick(k === null ? null : Number(k)),
    /** Shows the graph of the current step's torch.autograd.grad call k (0-based), or its backward() graph for null. */
    call: (k) => (k === null ? calls.show(null) : calls.show((DATA.calls ? DATA.calls.of[player.pos()] || [] : [])[k])),
    state: () => views.state(),
  };
})();
