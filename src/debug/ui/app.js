// crossmesh dashboard: renders the debug JSON endpoints; no state of its own.
// Plain JavaScript, no build step, no network access but the debug address.
"use strict";

const REFRESH_MS = 3000;
const TYPES = [
  ["CDS", "envoy.config.cluster.v3.Cluster"],
  ["LDS", "envoy.config.listener.v3.Listener"],
  ["EDS", "envoy.config.endpoint.v3.ClusterLoadAssignment"],
  ["RDS", "envoy.config.route.v3.RouteConfiguration"],
  ["SDS", "envoy.extensions.transport_sockets.tls.v3.Secret"],
];

function h(tag, attrs, ...children) {
  const e = document.createElementNS(
    tag === "svg" || attrs && attrs.svg ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "svg" || v === undefined || v === null) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
const s = (tag, attrs, ...c) => h(tag, Object.assign({ svg: true }, attrs), ...c);
const jsonLink = (path) => h("a", { href: path, class: "json", target: "_blank" }, "JSON");
const table = (head, rows) =>
  h("table", null, h("thead", null, h("tr", null, head.map((c) => h("th", null, c)))),
    h("tbody", null, rows.map((r) => h("tr", null, r.map((c) => h("td", null, c))))));

// The bearer token off loopback (debugAuth), kept for this tab only.
function token() { return sessionStorage.getItem("crossmesh-token"); }

class Unauthorized extends Error {}

// The response texts of the render in progress, to skip re-rendering a view
// whose data did not change since it was last drawn.
let fetched = [];
class Unchanged extends Error {}

async function get(path) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = "Bearer " + token();
  const r = await fetch(path, { headers, cache: "no-store" });
  if (r.status === 401) throw new Unauthorized((await r.json().catch(() => ({}))).error || "401");
  if (r.status === 404) { fetched.push(path + " 404"); return null; }
  if (!r.ok) throw new Error(path + " answered " + r.status);
  const text = await r.text();
  fetched.push(path + "\n" + text);
  return JSON.parse(text);
}

// Fetch every path at once; throws Unchanged when the view on screen was drawn
// from exactly these responses (nothing to redraw).
let drawn = "";
async function load(...paths) {
  const out = await Promise.all(paths.map(get));
  const key = location.hash + "\n" + (sessionStorage.getItem("filter-service") || "") + "\n" + (sessionStorage.getItem("filter-proxies") || "") + "\n" + fetched.join("\n");
  fetched = [];
  if (key === drawn && document.getElementById("view").childElementCount) throw new Unchanged();
  drawn = key;
  return out;
}

// istioctl proxy-status's state of one type (same rules as `crossmesh status`).
function xdsState(t) {
  if (!t) return "NOT SENT";
  if (t.nacked) return "NACKED";
  const sn = t.sent_nonce || "", an = t.acked_nonce || "";
  const sv = t.sent_version || "", av = t.acked_version || "";
  if (!sn && !sv) return "NOT SENT";
  if (sn && sn === an) return "SYNCED";
  if (!sn && sv === av) return "SYNCED";
  if (!an && !av) return "STALE (Never Acknowledged)";
  return "STALE";
}
const proxyName = (id) => (id.split("~")[2] || id);
const pct = (x) => (x * 100).toFixed(x > 0 && x < 0.01 ? 2 : 1) + "%";
const locLabel = (l) => !l ? "" : typeof l === "string" ? l :
  [l.region, l.zone, l.subzone].filter((x) => x).join("/");

const views = {};

views.topology = async () => {
  const [g] = await load("/debug/graphz?window=60");
  const out = [h("h2", null, "Topology (last 60 s)", jsonLink("/debug/graphz?window=60"))];
  if (!g || g.enabled === false) {
    out.push(h("p", { class: "warn", id: "graph-off" },
      "The service graph is off: no traffic data. Enable it with the mesh file's serviceGraph " +
      "and bootstrap proxies with --stats-sink (docs/OBSERVABILITY.md)."));
    return out;
  }
  const nodes = g.nodes || [], edges = g.edges || [];
  if (!edges.length) {
    out.push(h("p", { class: "muted", id: "graph-empty" }, "No traffic reported in the window."));
  }
  // Group: network -> cluster -> nodes. A service sits in its first cluster.
  const place = (n) => {
    if (n.kind === "workload") return [n.network || "(default network)", n.cluster || "?"];
    if (n.kind === "service") {
      return [(n.networks && n.networks[0]) || "(default network)", (n.clusters && n.clusters[0]) || "(no endpoints)"];
    }
    return ["(outside the mesh)", "envoy clusters"];
  };
  const groups = new Map();
  for (const n of nodes) {
    const [net, cl] = place(n);
    if (!groups.has(net)) groups.set(net, new Map());
    const cls = groups.get(net);
    if (!cls.has(cl)) cls.set(cl, []);
    cls.get(cl).push(n);
  }
  const NW = 220, NH = 34, GAP = 14, PAD = 26, COLW = NW + 2 * PAD + 30;
  const pos = new Map();
  const shapes = [];
  let x = 20;
  for (const [net, cls] of [...groups.entries()].sort()) {
    const netX = x;
    let maxH = 0;
    for (const [cl, ns] of [...cls.entries()].sort()) {
      ns.sort((a, b) => (a.kind === b.kind ? 0 : a.kind === "workload" ? -1 : 1) || String(a.id).localeCompare(b.id));
      const gh = PAD + ns.length * (NH + GAP) + 10;
      shapes.push(s("rect", { class: "group", x, y: 50, width: NW + 2 * PAD, height: gh, rx: 6 }));
      shapes.push(s("text", { class: "label", x: x + 8, y: 66 }, "cluster " + cl));
      ns.forEach((n, i) => pos.set(n.id, { x: x + PAD, y: 50 + PAD + i * (NH + GAP), n }));
      maxH = Math.max(maxH, gh);
      x += COLW;
    }
    shapes.unshift(s("rect", { class: "netgroup", x: netX - 10, y: 24, width: x - netX - 10, height: maxH + 40, rx: 8 }));
    shapes.push(s("text", { class: "label", x: netX - 4, y: 40 }, "network " + net));
    x += 20;
  }
  const width = Math.max(x, 400);
  const height = 100 + Math.max(0, ...[...pos.values()].map((p) => p.y)) + NH;
  const edgeShapes = [];
  for (const e of edges) {
    const a = pos.get(e.source), b = pos.get(e.destination);
    if (!a || !b) continue;
    const x1 = a.x + NW, y1 = a.y + NH / 2, x2 = b.x, y2 = b.y + NH / 2;
    const back = x2 <= x1;
    const d = back
      ? `M${x1},${y1} C${x1 + 60},${y1 - 40} ${x2 - 60},${y2 - 40} ${x2},${y2}`
      : `M${x1},${y1} C${(x1 + x2) / 2},${y1} ${(x1 + x2) / 2},${y2} ${x2},${y2}`;
    const failing = e.errors > 0 || e.connectFailures > 0;
    edgeShapes.push(s("path", { class: "edge" + (failing ? " failing" : ""), d, "marker-end": "url(#arrow)",
      "data-source": e.source, "data-destination": e.destination }));
    const label = `${e.rps} rps · ${e.requests} req · ${pct(e.errorRate)} err`;
    edgeShapes.push(s("text", { class: "edge-label", x: (x1 + x2) / 2 - 50, y: (y1 + y2) / 2 - 6 - (back ? 30 : 0),
      "data-source": e.source, "data-destination": e.destination }, label));
  }
  const nodeShapes = [...pos.values()].map(({ x, y, n }) => {
    const title = n.kind === "workload" ? `${n.workload}.${n.namespace}` : n.kind === "service" ? n.service : n.cluster;
    return s("g", { "data-node": n.id },
      s("rect", { class: "node " + n.kind, x, y, width: NW, height: NH, rx: 4 }),
      s("text", { x: x + 6, y: y + 14 }, title),
      s("text", { x: x + 6, y: y + 28, class: "muted" }, n.kind + (n.identity ? " · " + n.identity.replace("spiffe://", "") : "")));
  });
  out.push(s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, id: "topology" },
    s("defs", null, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
      s("path", { d: "M0,0 L10,5 L0,10 z", fill: "#5a7fb0" }))),
    shapes, edgeShapes, nodeShapes));
  out.push(table(["source", "destination", "requests", "rps", "errors (5xx)", "error rate", "p50 ms", "p99 ms"],
    edges.map((e) => [e.source, e.destination + (e.subset ? " (" + e.subset + ")" : ""), e.requests, e.rps, e.errors,
      h("span", { class: e.errorRate > 0 ? "bad" : "" }, pct(e.errorRate)),
      e.latencyMs ? e.latencyMs.p50 : "", e.latencyMs ? e.latencyMs.p99 : ""])));
  return out;
};

views.mesh = async () => {
  const [mesh, clusters] = await load("/debug/meshz", "/debug/clusterz");
  const counts = (mesh && mesh.counts) || {};
  const out = [h("h2", null, "Mesh", jsonLink("/debug/meshz")),
    h("div", { class: "cards" },
      h("div", { class: "card", id: "count-clusters" }, h("b", null, (clusters || []).length), "clusters ", jsonLink("/debug/clusterz")),
      h("div", { class: "card", id: "count-services" }, h("b", null, counts.services), "services ", jsonLink("/debug/servicez")),
      h("div", { class: "card", id: "count-endpoints" }, h("b", null, counts.endpoints), "endpoints (" + counts.readyEndpoints + " ready)"),
      h("div", { class: "card", id: "count-proxies" }, h("b", null, counts.proxies), "proxies ", jsonLink("/debug/syncz")))];
  if (mesh && !mesh.multiNetwork) {
    out.push(h("p", { class: "muted" }, "No network has an east-west gateway: networks reach each other directly (routed networks)."));
  }
  const byName = new Map((clusters || []).map((c) => [c.name, c]));
  for (const net of (mesh && mesh.networks) || []) {
    const label = net.name || "(default network)";
    const cs = net.clusters.map((n) => byName.get(n)).filter((c) => c);
    out.push(h("div", { class: "network", "data-network": label },
      h("h3", null, "network " + label, h("span", { class: "muted" }, " · " + net.endpoints + " endpoints")),
      table(["cluster", "source", "sync", "stale", "last error", "services", "pods", "rejected"],
        cs.map((c) => [
          h("span", { "data-cluster": c.name }, c.name), c.source,
          h("span", { class: c.synced ? "ok" : "warn" }, c.synced ? "synced" : "not synced"),
          h("span", { class: c.stale ? "bad" : "ok", "data-stale": c.name }, c.stale ? "STALE" : "live"),
          h("span", { class: c.last_error ? "error" : "" }, c.last_error || ""),
          (c.counts || {}).services, (c.counts || {}).pods, (c.rejected || []).length])),
      h("div", null, "east-west gateways: ", net.gateways.length ? null : h("span", { class: "muted" }, "none")),
      net.gateways.length ? table(["address", "port", "from", "cluster"], net.gateways.map((g) => [
        h("span", { "data-gateway": g.address + ":" + g.port, "data-gateway-cluster": g.cluster || "" }, g.address), g.port,
        g.from === "meshFile" ? "mesh file networks" : "Service labelled topology.istio.io/network", g.cluster || ""])) : null,
      h("div", null, "ingress gateways (router proxies connected): ",
        net.routers.length ? net.routers.map(proxyName).join(", ") : h("span", { class: "muted" }, "none"))));
  }
  return out;
};

views.service = async (arg) => {
  if (!arg) {
    const filter = sessionStorage.getItem("filter-service") || "";
    const path = "/debug/servicez?limit=500&filter=" + encodeURIComponent(filter);
    const [list] = await load(path);
    const shown = (list && list.services) || [];
    const input = h("input", { type: "search", placeholder: "filter by hostname", value: filter,
      oninput: (ev) => { sessionStorage.setItem("filter-service", ev.target.value); render(); } });
    return [h("h2", null, "Services (" + ((list && list.total) || 0) + ")", jsonLink(path)), input,
      table(["service", "clusters", "endpoints", "ready"], shown.map((svc) => [
        h("a", { href: "#/service/" + encodeURIComponent(svc.hostname) }, svc.hostname),
        (svc.clusters || []).join(", "), svc.endpoints, svc.ready])),
      list && shown.length < list.matched ? h("p", { class: "muted" }, "first " + shown.length + " of " + list.matched + " shown; filter to narrow") : null];
  }
  const host = decodeURIComponent(arg);
  const path = "/debug/servicez?host=" + encodeURIComponent(host);
  const [page] = await load(path);
  const svc = page && page.service;
  const out = [h("h2", null, host, jsonLink(path))];
  if (!svc) { out.push(h("p", { class: "warn" }, "not in the registry")); }
  for (const [cluster, eps] of Object.entries((svc && svc.endpoints) || {}).sort()) {
    out.push(h("h3", null, "cluster " + cluster));
    const byLoc = new Map();
    for (const e of eps) {
      const l = locLabel(e.locality) || "(no locality)";
      if (!byLoc.has(l)) byLoc.set(l, []);
      byLoc.get(l).push(e);
    }
    for (const [loc, list] of [...byLoc.entries()].sort()) {
      out.push(h("div", { class: "muted" }, "locality " + loc));
      out.push(table(["address", "port", "service port", "health", "weight", "network", "workload"],
        list.map((e) => [e.address, e.port, e.service_port,
          h("span", { class: e.ready && !e.stale ? "ok" : "bad" }, e.stale ? "STALE" : e.ready ? "HEALTHY" : "UNHEALTHY"),
          e.weight || 1, e.network || "", e.workload])));
    }
  }
  const vss = (page && page.virtualServices) || [];
  out.push(h("h3", null, "VirtualServices", h("span", { class: "muted" }, " (visibility judged from namespace " + (page && page.from) + ")")));
  out.push(vss.length ? table(["object", "applies on (host)", "routes to it", "exportTo", "visible", "from"],
    vss.map((o) => [h("span", { "data-vs": o.namespace + "/" + o.name }, o.namespace + "/" + o.name),
      o.appliesTo.map((a) => a.gateway + " (" + a.host + ")").join(", "), o.routesTo ? "yes" : "no",
      (o.exportTo || []).join(", ") || "*",
      h("span", { class: o.visible ? "ok" : "muted" }, o.visible ? "yes" : "no"), o.origin]))
    : h("p", { class: "muted" }, "none"));
  const drs = (page && page.destinationRules) || { rules: [], subsets: [] };
  out.push(h("h3", null, "DestinationRules"));
  out.push(drs.rules.length ? table(["object", "host", "subsets", "exportTo", "in force", "from"],
    drs.rules.map((o) => [h("span", { "data-dr": o.namespace + "/" + o.name }, o.namespace + "/" + o.name), o.host,
      o.subsets.join(", "), (o.exportTo || []).join(", ") || "*",
      h("span", { class: o.inForce ? "ok" : "muted" }, o.inForce ? "in force" : "no"), o.origin]))
    : h("p", { class: "muted" }, "none"));
  if (drs.subsets.length) {
    out.push(table(["subset", "labels", "endpoints per cluster"], drs.subsets.map((s) => [s.name,
      Object.entries(s.labels).map(([k, v]) => k + "=" + v).join(", "),
      Object.entries(s.endpoints).map(([c, n]) => c + ": " + n).join(", ") || "none"])));
  }
  out.push(h("h3", null, "Sent to"));
  const rs = (page && page.proxies) || [];
  out.push(rs.length ? table(["proxy", "clusters (routes reach them)", ""], rs.map((r) => [proxyName(r.proxy_id),
    r.clusters.join(", "), h("a", { href: "/debug/config_dump?proxyID=" + encodeURIComponent(r.proxy_id), target: "_blank" }, "config dump")]))
    : h("p", { class: "muted" }, "no connected proxy holds a cluster of it"));
  return out;
};

// Rows a table view draws at most; the rest are reached by filtering.
const MAX_ROWS = 500;

views.proxies = async () => {
  const [all] = await load("/debug/syncz");
  const sync = all || [];
  const filter = sessionStorage.getItem("filter-proxies") || "";
  const input = h("input", { type: "search", placeholder: "filter by name or cluster", value: filter,
    oninput: (ev) => { sessionStorage.setItem("filter-proxies", ev.target.value); render(); } });
  const states = (p) => TYPES.map(([, suffix]) => xdsState((p.types || []).find((t) => String(t.type_url).endsWith(suffix))));
  // NACKed and stale proxies first, then by name.
  const rank = (p) => { const st = states(p); return st.includes("NACKED") ? 0 : st.some((x) => x.startsWith("STALE")) ? 1 : 2; };
  const matched = sync.filter((p) => !filter || proxyName(p.proxy_id).includes(filter) || String(p.cluster_id).includes(filter));
  matched.sort((a, b) => rank(a) - rank(b) || proxyName(a.proxy_id).localeCompare(proxyName(b.proxy_id)));
  const nacks = [];
  const rows = matched.slice(0, MAX_ROWS).map((p) => {
    const cells = TYPES.map(([col, suffix]) => {
      const t = (p.types || []).find((t) => String(t.type_url).endsWith(suffix));
      const st = xdsState(t);
      if (st === "NACKED") nacks.push([proxyName(p.proxy_id), col, h("span", { class: "error nack-error" }, t.nacked.error)]);
      return h("span", { class: st === "NOT SENT" ? "NOT-SENT" : st.split(" ")[0], "data-type": col }, st);
    });
    return [h("span", { "data-proxy": p.proxy_id }, proxyName(p.proxy_id)), p.cluster_id || "", ...cells, p.mode,
      h("a", { href: "/debug/config_dump?proxyID=" + encodeURIComponent(p.proxy_id), target: "_blank" }, "config dump")];
  });
  return [h("h2", null, "Proxies (" + sync.length + ")", jsonLink("/debug/syncz")), input,
    table(["NAME", "CLUSTER", ...TYPES.map((t) => t[0]), "MODE", ""], rows),
    matched.length > MAX_ROWS ? h("p", { class: "muted" }, "first " + MAX_ROWS + " of " + matched.length + " shown (NACKed and stale first); filter to narrow") : null,
    nacks.length ? [h("h3", null, "NACKs"), table(["proxy", "type", "Envoy's error"], nacks)] : null];
};

views.config = async () => {
  const [config, clusters] = await load("/debug/configz", "/debug/clusterz");
  const rejected = (config && config.rejected) || [];
  const warnings = (config && config.warnings) || [];
  const fromClusters = [];
  for (const c of clusters || []) {
    for (const r of c.rejected || []) fromClusters.push([c.name, r.origin, r.kind, r.object, h("span", { class: "error" }, r.reason)]);
  }
  return [h("h2", null, "Rejected Istio config (" + rejected.length + ")", jsonLink("/debug/configz")),
    table(["file / source", "kind", "object", "field", "reason"], rejected.map((r) =>
      [r.origin, r.kind, r.namespace + "/" + r.name, r.field, h("span", { class: "error rejected-reason" }, r.reason)])),
    h("h2", null, "Warnings (" + warnings.length + ")"),
    table(["file / source", "kind", "object", "field", "message"], warnings.map((w) =>
      [w.origin, w.kind, w.namespace + "/" + w.name, w.field, h("span", { class: "warn" }, w.message)])),
    h("h2", null, "Rejected cluster objects (" + fromClusters.length + ")", jsonLink("/debug/clusterz")),
    table(["cluster", "source", "kind", "object", "reason"], fromClusters)];
};

let timer = null;
let rendering = false;
async function render() {
  if (rendering) return;
  rendering = true;
  const [name, arg] = (location.hash.replace(/^#\//, "") || "topology").split("/");
  const view = views[name] || views.topology;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === name);
  const t0 = performance.now();
  try {
    const content = await view(arg);
    const main = document.getElementById("view");
    const focused = document.activeElement && document.activeElement.type === "search";
    main.replaceChildren(...[content].flat(3).filter((c) => c));
    if (focused) { const i = main.querySelector("input[type=search]"); if (i) { i.focus(); i.setSelectionRange(i.value.length, i.value.length); } }
    document.getElementById("auth").hidden = true;
    document.body.dataset.view = name;
    document.body.dataset.loaded = String(Date.now());
    document.getElementById("refresh").textContent =
      "updated " + new Date().toLocaleTimeString() + " · " + Math.round(performance.now() - t0) + " ms";
  } catch (e) {
    fetched = [];
    if (e instanceof Unchanged) {
      document.body.dataset.loaded = String(Date.now());
      document.getElementById("refresh").textContent =
        "updated " + new Date().toLocaleTimeString() + " · unchanged · " + Math.round(performance.now() - t0) + " ms";
    } else if (e instanceof Unauthorized) {
      document.getElementById("auth").hidden = false;
      document.getElementById("auth-error").textContent = token() ? "refused: " + e.message : "";
    } else {
      document.getElementById("refresh").textContent = "refresh failed: " + e.message;
    }
  } finally {
    rendering = false;
  }
}

window.addEventListener("hashchange", render);
window.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token-ok").addEventListener("click", () => {
    sessionStorage.setItem("crossmesh-token", document.getElementById("token").value.trim());
    render();
  });
  render();
  timer = setInterval(() => { if (!document.hidden) render(); }, REFRESH_MS);
});
