// The AIOS console: one page over the gateway's admin API, no framework and no code from
// elsewhere. The token lives in this tab's sessionStorage and goes out only as the
// Authorization header of same-origin API calls (no cookie: a cross-site request carries
// no credentials). Every value from the API is put on the page as text (textContent),
// never as HTML.

const TOKEN_KEY = "aios-console-token";
const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const statusLine = document.getElementById("status");

// Pages, and the scope each needs (as the gateway checks it).
const PAGES = [
  { id: "routes", title: "Routes", scope: "routes:read", render: routesPage },
  { id: "health", title: "Health", scope: "routes:read", render: healthPage },
  { id: "rollouts", title: "Rollouts", scope: "routes:read", render: rolloutsPage },
  { id: "replays", title: "Replays", scope: "replay:run", render: replaysPage },
  { id: "reviews", title: "Reviews", scope: "review:read", render: reviewsPage },
  { id: "decisions", title: "Decisions", scope: "audit:read", render: decisionsPage },
];

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "value") el.value = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit", cache: "no-store",
  });
  let doc = null;
  try { doc = await resp.json(); } catch { doc = null; }
  if (!resp.ok) {
    throw new ApiError(resp.status, (doc && doc.error) || `${resp.status} ${resp.statusText}`);
  }
  return doc;
}

// A maker of labelled text fields for one form: field(id, label, attrs) gives the input
// (id `${prefix}-${id}`) and its label holding it.
function labelled(prefix, size) {
  return (id, label, attrs = {}) => {
    const input = h("input", { id: `${prefix}-${id}`, type: "text", size, ...attrs });
    return [input, h("label", { for: input.id }, label, input)];
  };
}

function say(text, kind = "") {
  statusLine.replaceChildren(h("span", { class: kind }, text));
}

function span(s) {
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

function ago(seconds) {
  const s = Math.max(0, Date.now() / 1000 - seconds);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

let me = null; // the gateway's view of the token: subject, tenant, scopes

// The first page the token may see (where a sign-in lands).
function firstPage() {
  return PAGES.find((p) => allows(p.scope)) || PAGES[0];
}

function allows(scope) {
  if (!me) return false;
  return me.scopes.includes(scope) || me.scopes.includes(`${scope.split(":")[0]}:*`);
}

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token.trim());
  try {
    me = await api("GET", "/admin/whoami");
  } catch (err) {
    sessionStorage.removeItem(TOKEN_KEY);
    me = null;
    throw err;
  }
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  me = null;
  location.hash = "#login";
  show();
}

// -- Sign-in at an OpenID provider (authorization code with PKCE) -------------------------

const OIDC_KEY = "aios-console-oidc"; // this tab's pending sign-in: state and verifier
let signInError = ""; // why the last sign-in failed, shown on the sign-in page

function b64url(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomText(n) {
  return b64url(crypto.getRandomValues(new Uint8Array(n)));
}

async function toProvider(provider) {
  const verifier = randomText(48);
  const state = randomText(24);
  const redirect = `${location.origin}/console/`;
  sessionStorage.setItem(OIDC_KEY, JSON.stringify({ state, verifier, redirect }));
  const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  const query = new URLSearchParams({
    response_type: "code", client_id: provider.client_id, redirect_uri: redirect, scope: provider.scope,
    state, nonce: randomText(16), code_challenge: challenge, code_challenge_method: "S256",
  });
  location.assign(`${provider.authorization_endpoint}?${query}`);
}

// Back from the provider (?code=…&state=… or ?error=…): the code becomes a token, once
// the state matches the sign-in this tab started (a code from anywhere else is refused).
async function fromProvider() {
  const answer = new URLSearchParams(location.search);
  if (!answer.has("code") && !answer.has("error")) return;
  const pending = JSON.parse(sessionStorage.getItem(OIDC_KEY) || "null");
  sessionStorage.removeItem(OIDC_KEY);
  history.replaceState(null, "", "/console/#login");
  if (answer.has("error")) {
    signInError = `Sign-in refused by the identity provider: ${answer.get("error")}` +
      (answer.get("error_description") ? ` (${answer.get("error_description")})` : "");
    return;
  }
  if (!pending || pending.state !== answer.get("state")) {
    signInError = "Sign-in refused: the answer does not belong to a sign-in started in this tab; start again.";
    return;
  }
  try {
    const { token } = await api("POST", "/console/oidc/token",
      { code: answer.get("code"), code_verifier: pending.verifier, redirect_uri: pending.redirect });
    await signIn(token);
    location.hash = `#${firstPage().id}`;
  } catch (err) {
    signInError = `Sign-in refused: ${err.message}`;
  }
}

async function loginPage() {
  const field = h("textarea", { id: "token", name: "token", required: true,
                                autocomplete: "off", spellcheck: "false" });
  const error = h("p", { class: "error", role: "alert" }, signInError);
  signInError = "";
  const form = h("form", {
    onsubmit: async (event) => {
      event.preventDefault();
      try {
        await signIn(field.value);
        location.hash = `#${firstPage().id}`;
        show();
      } catch (err) {
        error.textContent = `Sign-in refused: ${err.message}`;
      }
    },
  }, h("h2", {}, "Sign in"),
     h("label", { for: "token" }, "Bearer token (a JWT from your identity provider, or `aios token`)"),
     field, h("div", { class: "row" }, h("button", { type: "submit" }, "Sign in")));
  let provider = { enabled: false };
  try {
    provider = await api("GET", "/console/oidc");
  } catch (err) {
    error.textContent = `Sign-in at the identity provider is unavailable: ${err.message}`;
  }
  const viaProvider = provider.enabled ? h("div", { class: "card" },
    h("button", { type: "button", onclick: () => toProvider(provider).catch((err) => { error.textContent = err.message; }) },
      "Sign in with your identity provider"),
    h("p", { class: "muted" }, provider.issuer), h("p", { class: "muted" }, "or paste a token:")) : null;
  return [viaProvider, form, error].filter(Boolean);
}

// -- Routes -------------------------------------------------------------------------------

async function routesPage() {
  const { routes } = await api("GET", "/admin/routes");
  return routes.map((table) => routeCard(table));
}

function routeCard(table) {
  const card = h("section", { class: "card", "aria-label": `model ${table.model}` });
  const render = (current, notice) => {
    const names = Object.keys(current.targets).sort();
    const rows = names.map((name) => {
      const t = current.targets[name];
      return h("tr", {}, h("td", {}, name), h("td", {}, t.backend), h("td", {}, t.version || "-"),
               h("td", {}, String(t.weight)),
               h("td", { class: t.ejected ? "error" : "ok" }, t.ejected ? "ejected" : "serving"));
    });
    const shadow = current.shadow ? `${current.shadow.backend} v${current.shadow.version || "-"}, ` +
      `${Math.round((current.shadow.fraction ?? 1) * 100)}%` : "none";
    const parts = [
      h("h2", {}, current.model),
      h("p", { class: "muted" }, `revision ${current.revision} · sticky ${current.sticky} · shadow ${shadow}`),
      h("table", {}, h("thead", {}, h("tr", {}, ["target", "backend", "version", "weight", "state"]
        .map((c) => h("th", { scope: "col" }, c)))), h("tbody", {}, rows)),
    ];
    if (notice) parts.push(notice);
    if (allows("routes:write") && names.length > 1) parts.push(weightsForm(current, names, render));
    parts.push(pendingBlock(current, render));
    parts.push(historyBlock(current.model));
    card.replaceChildren(...parts);
  };
  render(table);
  return card;
}

function weightsForm(current, names, render) {
  const inputs = Object.fromEntries(names.map((name) => [name, h("input", {
    type: "number", min: 0, max: 1000, step: 1, required: true,
    id: `w-${current.model}-${name}`, value: current.targets[name].weight,
  })]));
  const reason = h("input", { type: "text", id: `reason-${current.model}`, required: true,
                              maxlength: 500, size: 40 });
  return h("form", {
    "aria-label": `change weights of ${current.model}`,
    onsubmit: async (event) => {
      event.preventDefault();
      const weights = Object.fromEntries(names.map((n) => [n, Number(inputs[n].value)]));
      try {
        const saved = await api("PUT", `/admin/routes/${encodeURIComponent(current.model)}/weights`,
                                { base_revision: current.revision, weights, reason: reason.value });
        if (saved.proposal) {  // a four-eyes model: the change waits for a second subject
          say(`Proposed for ${current.model}: proposal ${saved.proposal.id} waits for a second subject's approval.`, "ok");
          render(current);
        } else {
          say(`Saved ${current.model}: revision ${saved.revision}.`, "ok");
          render(saved);
        }
      } catch (err) {
        if (err.status === 409) {
          // Someone changed the table since it was read: show theirs, keep nothing silently.
          const fresh = await api("GET", `/admin/routes/${encodeURIComponent(current.model)}`);
          render(fresh, h("p", { class: "error", role: "alert" },
            `Not saved: ${err.message}. The table now shows revision ${fresh.revision}; ` +
            "review it and apply your change again."));
        } else {
          say(`Not saved: ${err.message}`, "error");
        }
      }
    },
  }, h("div", { class: "row" },
       names.map((n) => h("label", { for: inputs[n].id }, `weight of ${n}`, inputs[n])),
       h("label", { for: reason.id }, "reason (kept in history)", reason),
       h("button", { type: "submit" }, "Apply")));
}

// Four-eyes proposals waiting for a second subject (shown when there are any).
function pendingBlock(current, render) {
  const box = h("div", {});
  api("GET", `/admin/proposals?model=${encodeURIComponent(current.model)}&state=pending`).then(({ proposals }) => {
    if (!proposals.length) return;
    const reason = h("input", { type: "text", id: `approve-reason-${current.model}`, maxlength: 1000, size: 30 });
    const act = (p, verb) => async () => {
      try {
        const done = await api("POST", `/admin/proposals/${encodeURIComponent(p.id)}/${verb}`, { reason: reason.value });
        say(`Proposal ${p.id}: ${done.proposal.state}.`, "ok");
        render(done.route || await api("GET", `/admin/routes/${encodeURIComponent(current.model)}`));
      } catch (err) {
        say(`Proposal ${p.id}: ${err.message}`, "error");
      }
    };
    box.replaceChildren(h("h3", {}, "Waiting for a second subject"),
      h("table", { "aria-label": `pending changes of ${current.model}` },
        h("thead", {}, h("tr", {}, ["proposal", "proposed by", "change", "reason", ""].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, proposals.map((p) => h("tr", {}, h("td", {}, p.id), h("td", {}, p.proposer),
          h("td", {}, p.body.weights ? Object.entries(p.body.weights).map(([n, w]) => `${n} → ${w}`).join("; ") : p.action),
          h("td", {}, p.reason || "-"),
          h("td", {}, allows("routes:approve") ? [
            h("button", { type: "button", onclick: act(p, "approve") }, "Approve"), " ",
            h("button", { type: "button", class: "secondary", onclick: act(p, "reject") }, "Reject")] : "needs routes:approve"))))),
      allows("routes:approve") ? h("label", { for: reason.id }, "reason for your answer", reason) : null);
  }).catch((err) => say(`Proposals: ${err.message}`, "error"));
  return box;
}

function historyBlock(model) {
  const box = h("div", {});
  const button = h("button", {
    type: "button", class: "secondary", "aria-expanded": "false",
    onclick: async () => {
      const { changes } = await api("GET", `/admin/routes/${encodeURIComponent(model)}/history?limit=20`);
      button.setAttribute("aria-expanded", "true");
      box.replaceChildren(h("table", { "aria-label": `history of ${model}` },
        h("thead", {}, h("tr", {}, ["revision", "when", "who", "action", "reason", "change"]
          .map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, changes.map((c) => h("tr", {},
          h("td", {}, String(c.revision)), h("td", { title: new Date(c.at * 1000).toISOString() }, ago(c.at)),
          h("td", {}, c.approved_by ? `${c.who}, approved by ${c.approved_by} (${c.approval_reason || "no reason"})` : c.who),
          h("td", {}, c.action), h("td", {}, c.reason || "-"),
          h("td", {}, diff(c.before, c.after)))))));
    },
  }, "History");
  return h("div", {}, button, box);
}

function diff(before, after) {
  const weights = (doc) => Object.fromEntries(Object.entries((doc && doc.targets) || {})
    .map(([n, t]) => [n, t.weight]));
  const was = weights(before);
  const now = weights(after);
  const out = [];
  for (const name of [...new Set([...Object.keys(was), ...Object.keys(now)])].sort()) {
    if (was[name] !== now[name]) out.push(`${name} ${was[name] ?? "-"} → ${now[name] ?? "-"}`);
  }
  const shadow = (doc) => (doc && doc.shadow ? JSON.stringify(doc.shadow) : "none");
  if (shadow(before) !== shadow(after)) out.push(`shadow ${shadow(before)} → ${shadow(after)}`);
  return out.join("; ") || (before ? "no weight change" : "created");
}

// -- Health -------------------------------------------------------------------------------

const POLL_MS = 2000;
// What counts as an error of the service (5xx and their gRPC codes), not of the caller.
const SERVER_FAULTS = ["UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "DATA_LOSS", "error"];
const KEEP = 60; // points per chart: two minutes at one poll each 2 s
let poller = null;

// The window's percentile from two cumulative histograms (bucket bounds in seconds).
function quantile(now, was, q) {
  const counts = now.buckets.map(([le, n], i) => [le, n - ((was && was.buckets[i]) ? was.buckets[i][1] : 0)]);
  const total = counts.length ? counts[counts.length - 1][1] : 0;
  if (total <= 0) return null;
  const want = q * total;
  for (const [le, n] of counts) if (n >= want) return Number.isFinite(le) ? le : null;
  return null;
}

function spark(points, label) {
  const w = 160, hgt = 28;
  const top = Math.max(...points, 1e-9);
  const path = points.map((v, i) => `${i ? "L" : "M"}${(i * w / Math.max(KEEP - 1, 1)).toFixed(1)},${(hgt - (v / top) * (hgt - 2) - 1).toFixed(1)}`).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
  svg.setAttribute("width", w);
  svg.setAttribute("height", hgt);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "path");
  line.setAttribute("d", path || "M0,0");
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#0b5cad");
  line.setAttribute("stroke-width", "1.5");
  svg.append(line);
  return svg;
}

function fmtMs(s) { return s === null ? "-" : `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)} ms`; }

function healthPage() {
  const box = h("div", { "aria-live": "polite" });
  const series = {}; // "model vX" → {rate: [], p99: []}
  let last = null;
  const draw = (doc) => {
    const dt = last ? doc.at - last.at : 0;
    const key = (r) => `${r.model}\u0000${r.version}`;
    const totals = (d) => {
      const out = {};
      for (const r of d.gateway.requests) {
        const o = out[key(r)] ||= { model: r.model, version: r.version, all: 0, failed: 0 };
        o.all += r.count;
        if (r.code.startsWith("5") || SERVER_FAULTS.includes(r.code)) o.failed += r.count;
      }
      return out;
    };
    const now = totals(doc);
    const was = last ? totals(last) : {};
    const latency = Object.fromEntries(doc.gateway.latency.map((l) => [key(l), l]));
    const latencyWas = last ? Object.fromEntries(last.gateway.latency.map((l) => [key(l), l])) : {};
    const rows = Object.entries(now).sort().map(([k, t]) => {
      const before = was[k] || { all: 0, failed: 0 };
      const rate = dt > 0 ? (t.all - before.all) / dt : 0;
      const errors = t.all - before.all > 0 ? (t.failed - before.failed) / (t.all - before.all) : 0;
      const l = latency[k];
      const p = (q) => (l ? quantile(l, latencyWas[k], q) : null);
      const s = series[k] ||= { rate: [], p99: [] };
      s.rate.push(rate); s.p99.push(p(0.99) || 0);
      if (s.rate.length > KEEP) { s.rate.shift(); s.p99.shift(); }
      const name = t.version === "default" ? `${t.model} (as routed)` : `${t.model} v${t.version}`;
      return h("tr", {}, h("th", { scope: "row" }, name), h("td", {}, rate.toFixed(1)),
        h("td", { class: errors > 0.01 ? "error" : "" }, `${(errors * 100).toFixed(1)}%`),
        h("td", {}, fmtMs(p(0.5))), h("td", {}, fmtMs(p(0.95))), h("td", {}, fmtMs(p(0.99))),
        h("td", {}, spark(s.rate, `requests per second of ${name}`)),
        h("td", {}, spark(s.p99, `p99 latency of ${name}`)));
    });
    const agreement = {};
    for (const r of doc.gateway.shadow || []) {
      const a = agreement[`${r.model} → ${r.shadow}`] ||= { yes: 0, all: 0 };
      a.all += r.count;
      if (r.agree === "true") a.yes += r.count;
    }
    const parts = [h("h2", {}, "Requests through the gateway"),
      h("p", { class: "muted" }, `Updated every ${POLL_MS / 1000} s; rates and percentiles over the last poll.`),
      h("table", { "aria-label": "requests per model version" }, h("thead", {}, h("tr", {},
        ["model version", "req/s", "errors", "p50", "p95", "p99", "req/s (2 min)", "p99 (2 min)"]
          .map((c) => h("th", { scope: "col" }, c)))), h("tbody", {}, rows))];
    if (Object.keys(agreement).length) {
      parts.push(h("h2", {}, "Shadow agreement"), h("table", { "aria-label": "shadow agreement" },
        h("tbody", {}, Object.entries(agreement).map(([k, a]) => h("tr", {}, h("th", { scope: "row" }, k),
          h("td", {}, `${(100 * a.yes / Math.max(a.all, 1)).toFixed(1)}% of ${a.all}`))))));
    }
    for (const [name, b] of Object.entries(doc.backends)) {
      parts.push(h("h2", {}, `Backend ${name}`));
      if (!b.up) { parts.push(h("p", { class: "error" }, `not answering: ${b.error}`)); continue; }
      parts.push(h("p", {}, `CPU per prediction: ${b.cpu_seconds_per_request ? `${(b.cpu_seconds_per_request * 1e6).toFixed(0)} µs` : "-"}`));
      parts.push(h("table", { "aria-label": `golden parity on ${name}` }, h("thead", {}, h("tr", {},
        ["model version", "golden parity", "worst difference"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, b.parity.map((p) => h("tr", {}, h("th", { scope: "row" }, `${p.model} v${p.version}`),
          h("td", { class: p.ok ? "ok" : "error" }, p.ok ? "passing" : "FAILING"),
          h("td", {}, p.max_abs_diff === undefined ? "-" : p.max_abs_diff.toExponential(2)))))));
      const drift = [...b.drift].sort((x, y) => (y.flagged || 0) - (x.flagged || 0) || (y.psi || 0) - (x.psi || 0));
      parts.push(h("table", { "aria-label": `drift on ${name}` }, h("thead", {}, h("tr", {},
        ["model version", "feature", "PSI", "KS", "state"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, drift.map((d) => h("tr", { class: d.flagged ? "sla-late" : "" },
          h("td", {}, `${d.model} v${d.version}`), h("th", { scope: "row" }, d.feature),
          h("td", {}, d.psi === undefined ? "-" : d.psi.toFixed(3)), h("td", {}, d.ks === undefined ? "-" : d.ks.toFixed(3)),
          h("td", { class: d.flagged ? "error" : "ok" }, d.flagged ? "DRIFTED" : "ok"))))));
    }
    box.replaceChildren(...parts);
    last = doc;
  };
  const poll = async () => {
    if (location.hash !== "#health") { clearInterval(poller); poller = null; return; }
    try { draw(await api("GET", "/admin/health")); } catch (err) { say(`Health: ${err.message}`, "error"); }
  };
  clearInterval(poller);
  poller = setInterval(poll, POLL_MS);
  poll();
  return [box];
}

// -- Rollouts -----------------------------------------------------------------------------

const ACTIVE_ROLLOUT = ["awaiting_approval", "running", "paused"];
// Which buttons a rollout in each state offers, and the scope each needs.
const ROLLOUT_ACTIONS = [
  ["pause", "Pause", ["running"], "routes:write"],
  ["resume", "Resume", ["paused"], "routes:write"],
  ["promote", "Promote", ["running", "paused"], "routes:write"],
  ["abort", "Abort", ACTIVE_ROLLOUT, "routes:write"],
  ["approve", "Approve", ["awaiting_approval"], "routes:approve"],
  ["reject", "Reject", ["awaiting_approval"], "routes:approve"],
];

async function rolloutsPage() {
  const { routes } = await api("GET", "/admin/routes");
  const detail = h("div", { id: "rollout-detail", tabindex: "-1" });
  const listBox = h("div", {});
  // The list is drawn again whenever the rollout shown changes state.
  const drawList = async () => {
    const { rollouts } = await api("GET", "/admin/rollouts");
    listBox.replaceChildren(rollouts.length ? h("table", { "aria-label": "rollouts" }, h("thead", {}, h("tr", {},
      ["rollout", "model", "candidate", "state", "step", "started by", "updated"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rollouts.map((r) => h("tr", {},
        h("td", {}, h("a", { href: "#rollouts", onclick: (e) => { e.preventDefault(); watchRollout(r.model, detail, drawList); } }, r.id)),
        h("td", {}, r.model), h("td", {}, `${r.candidate} (v${r.candidate_version || "-"})`),
        h("td", { class: stateClass(r.state) }, r.state.replace("_", " ")),
        h("td", {}, `${r.step + 1} of ${r.plan.steps.length} · ${r.target_percent}%`),
        h("td", {}, r.started_by), h("td", { title: new Date((r.updated_at || r.at) * 1000).toISOString() },
          ago(r.updated_at || r.at)))))) : h("p", { class: "muted" }, "No rollout yet."));
    return rollouts;
  };
  const rollouts = await drawList();
  const live = rollouts.find((r) => ACTIVE_ROLLOUT.includes(r.state));
  if (live) watchRollout(live.model, detail, drawList);
  return [h("h2", {}, "Rollouts"), listBox, detail,
          allows("routes:write") ? startForm(routes, detail, drawList) : null].filter(Boolean);
}

function stateClass(state) {
  return state === "running" || state === "completed" ? "ok"
    : state === "rolled_back" || state === "aborted" || state === "rejected" ? "error" : "warn";
}

function startForm(routes, detail, drawList) {
  const field = labelled("ro", 8);
  const model = h("select", { id: "ro-model", required: true },
    routes.map((t) => h("option", { value: t.model }, t.model)));
  const [candidate, candidateLabel] = field("candidate", "candidate (target or version)", { required: true, size: 12 });
  const [stable, stableLabel] = field("stable", "stable target (if not the only live one)", { size: 12 });
  const [steps, stepsLabel] = field("steps", "steps (% on the candidate)", { value: "0,5,25,50,100", size: 14, required: true });
  const [dwell, dwellLabel] = field("dwell", "dwell per step (s)", { type: "number", min: 0, step: "any", value: 60 });
  const [minRequests, minLabel] = field("min", "min requests per step", { type: "number", min: 1, value: 100 });
  const [output, outputLabel] = field("output", "decision output", { value: "risk_score", size: 12 });
  const [threshold, thresholdLabel] = field("threshold", "decision threshold", { type: "number", step: "any", value: 0.5 });
  const [errors, errorsLabel] = field("max-error-rate", "max error rate", { type: "number", min: 0, max: 1, step: "any", value: 0.02 });
  const [agreement, agreementLabel] = field("min-agreement", "min shadow agreement", { type: "number", min: 0, max: 1, step: "any", value: 0.9 });
  const [p99, p99Label] = field("max-p99", "max p99 (ms)", { type: "number", min: 1, step: "any", value: 1000 });
  const drift = h("input", { id: "ro-drift", type: "checkbox", checked: true });
  const parity = h("input", { id: "ro-parity", type: "checkbox", checked: true });
  const [reason, reasonLabel] = field("reason", "reason (kept in history)", { required: true, maxlength: 1000, size: 30 });
  const number = (input) => (input.value.trim() === "" ? null : Number(input.value));
  return h("form", {
    "aria-label": "start a rollout",
    onsubmit: async (event) => {
      event.preventDefault();
      const plan = {
        candidate: candidate.value.trim(), steps: steps.value.split(",").map((x) => Number(x.trim())),
        dwell_s: Number(dwell.value), min_requests: Number(minRequests.value),
        output: output.value.trim(), threshold: number(threshold), reason: reason.value,
        gates: { max_error_rate: number(errors), min_agreement: number(agreement), max_p99_ms: number(p99),
                 drift: drift.checked, parity: parity.checked },
      };
      if (stable.value.trim()) plan.stable = stable.value.trim();
      try {
        const started = await api("POST", `/admin/rollouts/${encodeURIComponent(model.value)}`, plan);
        say(started.note || `Rollout ${started.id} of ${started.model} started.`, "ok");
        watchRollout(started.model, detail, drawList);
      } catch (err) {
        say(`Rollout not started: ${err.message}`, "error");
      }
    },
  }, h("h3", {}, "Start a rollout"),
     h("div", { class: "row" }, h("label", { for: model.id }, "model", model), candidateLabel, stableLabel, stepsLabel,
       dwellLabel, minLabel),
     h("div", { class: "row" }, outputLabel, thresholdLabel, errorsLabel, agreementLabel, p99Label,
       h("label", { for: drift.id, class: "check" }, drift, "no drift flag"),
       h("label", { for: parity.id, class: "check" }, parity, "golden parity passing")),
     h("div", { class: "row" }, reasonLabel, h("button", { type: "submit" }, "Start rollout")));
}

// One rollout, polled while it is active and the page is shown. The figures are redrawn
// on each poll; the buttons and the reason field only when the state changes, so what
// one types is kept.
async function watchRollout(model, box, drawList) {
  let shown = null;
  const figures = h("div", {});
  const actions = h("div", {});
  box.replaceChildren(figures, actions);
  const poll = async () => {
    if (!box.isConnected || location.hash !== "#rollouts" || box.firstChild !== figures) return;
    let r;
    try {
      r = await api("GET", `/admin/rollouts/${encodeURIComponent(model)}`);
    } catch (err) {
      figures.replaceChildren(h("p", { class: "error", role: "alert" }, err.message));
      return;
    }
    const open = figures.querySelector("details")?.open ?? false;  // kept open across polls
    figures.replaceChildren(...rolloutFigures(r, open));
    const key = `${r.id} ${r.state} ${r.step} ${r.promote_by}`;
    if (key !== shown) {
      shown = key;
      actions.replaceChildren(...rolloutActions(r, box, drawList));
      drawList().catch((err) => say(`Rollouts: ${err.message}`, "error"));
    }
    if (ACTIVE_ROLLOUT.includes(r.state)) setTimeout(poll, 1000);
  };
  await poll();
}

function rolloutFigures(r, eventsOpen) {
  const plan = r.plan;
  const last = r.last || { gates: [], why: "not evaluated yet", action: "wait" };
  const now = Date.now() / 1000;
  const active = ACTIVE_ROLLOUT.includes(r.state);
  const fmt = (gate, x) => (x === null || x === undefined ? "-"
    : gate === "p99_ms" ? `${x} ms`
    : gate === "parity" ? `max |diff| ${x}` : gate.includes("rate") || gate === "agreement" ? `${(100 * x).toFixed(2)}%` : String(x));
  return [
    h("h2", {}, `Rollout ${r.id}: ${r.model}, ${r.stable} → ${r.candidate} (v${r.candidate_version || "-"})`),
    h("p", {}, h("strong", { class: stateClass(r.state) }, r.state.replace("_", " ")),
      ` · step ${r.step + 1} of ${plan.steps.length}: candidate at ${r.target_percent}%` +
      (active ? ` (${r.applied ? "applied" : "being applied"}) for ${span(now - r.step_started_at)}` : "") +
      ` · dwell ${plan.dwell_s} s, at least ${plan.min_requests} requests per step · started by ${r.started_by}` +
      (r.approved_by ? `, approved by ${r.approved_by}` : "") + (r.driver ? ` · driven by ${r.driver}` : "")),
    r.promote_by ? h("p", { class: "warn" }, `Promote asked by ${r.promote_by} (${r.promote_reason || "no reason"}): waits for a second subject.`) : null,
    h("ol", { class: "steps", "aria-label": "steps" }, plan.steps.map((pct, i) => h("li", {
      class: i < r.step ? "done" : i === r.step ? "current" : "",
      "aria-current": i === r.step ? "step" : false,
    }, pct === 0 ? "0% (shadow)" : `${pct}%`))),
    h("table", { "aria-label": "gates" }, h("thead", {}, h("tr", {},
      ["gate", "value", "bound", "sample", "verdict", "evidence"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, last.gates.map((g) => h("tr", {},
        h("td", {}, g.gate), h("td", {}, fmt(g.gate, g.value)), h("td", {}, fmt(g.gate, g.bound)),
        h("td", {}, `n = ${g.n}`),
        h("td", { class: g.passed === true ? "ok" : g.passed === false ? "error" : "warn" },
          g.passed === true ? "passing" : g.passed === false ? "failing" : "waiting"),
        h("td", {}, g.detail))))),
    h("p", {}, `Last check: ${last.action} — ${last.why}`),
    h("details", { open: eventsOpen }, h("summary", {}, `Events (${r.events.length})`),
      h("table", { "aria-label": "rollout events" }, h("thead", {}, h("tr", {},
        ["when", "what", "who", "step", "percent", "note"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, [...r.events].reverse().map((e) => h("tr", {},
          h("td", { title: new Date(e.at * 1000).toISOString() }, ago(e.at)), h("td", {}, e.what), h("td", {}, e.who),
          h("td", {}, String(e.step + 1)), h("td", {}, `${e.percent}%`), h("td", {}, e.note || "-")))))),
  ].filter(Boolean);
}

function rolloutActions(r, box, drawList) {
  const offered = ROLLOUT_ACTIONS.filter(([action, , states, scope]) => allows(scope) &&
    (states.includes(r.state) || ((action === "approve" || action === "reject") && r.promote_by)));
  const replay = allows("replay:run") ? h("p", {}, h("a", { href: "#replays" },
    `Replay recorded decisions against v${r.candidate_version}`)) : null;
  if (!offered.length) return [replay].filter(Boolean);
  const reason = h("input", { type: "text", id: "rollout-reason", maxlength: 1000, size: 40 });
  const act = (action) => async () => {
    try {
      const done = await api("POST", `/admin/rollouts/${encodeURIComponent(r.model)}/${action}`, { reason: reason.value });
      say(`Rollout ${r.id}: ${action} done, now ${done.state.replace("_", " ")}.`, "ok");
      watchRollout(r.model, box, drawList);
    } catch (err) {
      say(`Rollout ${r.id}: ${err.message}`, "error");
    }
  };
  return [h("form", { "aria-label": "act on the rollout", onsubmit: (e) => e.preventDefault() },
    h("div", { class: "row" }, h("label", { for: reason.id }, "reason", reason),
      offered.map(([action, label]) => h("button", {
        type: "button", class: action === "abort" || action === "reject" ? "secondary" : "", onclick: act(action),
      }, label)))), replay].filter(Boolean);
}

// -- Replays ------------------------------------------------------------------------------

async function replaysPage() {
  const field = labelled("r", 14);
  const [model, modelLabel] = field("model", "model", { required: true, value: "claims_risk" });
  const [candidate, candidateLabel] = field("candidate", "candidate version", { required: true, size: 4 });
  const [since, sinceLabel] = field("since", "recorded from (ISO 8601)");
  const [until, untilLabel] = field("until", "recorded to");
  const [threshold, thresholdLabel] = field("threshold", "threshold", { value: "0.5", size: 5 });
  const box = h("div", { id: "replay-detail", tabindex: "-1" });
  const form = h("form", {
    "aria-label": "start a replay",
    onsubmit: async (event) => {
      event.preventDefault();
      const body = { model: model.value, candidate: candidate.value, threshold: Number(threshold.value) };
      if (since.value) body.since = since.value;
      if (until.value) body.until = until.value;
      try {
        const job = await api("POST", "/admin/replays", body);
        say(`Replay ${job.id} started.`, "ok");
        watchReplay(job.id, box);
      } catch (err) {
        say(`Replay not started: ${err.message}`, "error");
      }
    },
  }, h("div", { class: "row" }, modelLabel, candidateLabel, sinceLabel, untilLabel, thresholdLabel,
       h("button", { type: "submit" }, "Replay")));
  const { replays } = await api("GET", "/admin/replays");
  const list = h("table", { "aria-label": "recent replays" }, h("thead", {}, h("tr", {},
    ["replay", "model", "candidate", "state", "rows", "by"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, replays.map((j) => h("tr", {},
      h("td", {}, h("a", { href: "#replays", onclick: (e) => { e.preventDefault(); watchReplay(j.id, box); } }, j.id)),
      h("td", {}, j.asked.model), h("td", {}, j.asked.candidate), h("td", {}, j.state),
      h("td", {}, `${j.scored}/${j.rows}`), h("td", {}, j.who)))));
  return [h("h2", {}, "Replay recorded decisions against a candidate"), form, list, box];
}

async function watchReplay(id, box) {
  const job = await api("GET", `/admin/replays/${encodeURIComponent(id)}`);
  if (job.state === "running") {
    box.replaceChildren(h("p", {}, `Replay ${id}: ${job.scored} of ${job.rows || "?"} rows scored…`),
      h("progress", { max: job.rows || 1, value: job.scored, "aria-label": "rows scored" }));
    setTimeout(() => { if (location.hash === "#replays") watchReplay(id, box); }, 1000);
    return;
  }
  if (job.state === "failed") {
    box.replaceChildren(h("p", { class: "error", role: "alert" }, `Replay ${id} failed: ${job.error}`));
    return;
  }
  const r = job.report;
  const a = r.agreement;
  const c = r.confusion;
  const pct = (x) => `${(100 * x).toFixed(2)}%`;
  box.replaceChildren(
    h("h2", {}, `Replay ${id}: ${job.asked.model} version ${job.asked.candidate}`),
    h("p", {}, `Agreement at ${r.threshold}: ${a.agreed} of ${a.rows} = ${pct(a.rate)} (95% CI ${pct(a.ci95[0])}–${pct(a.ci95[1])})`),
    h("table", { "aria-label": "confusion matrix" }, h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "recorded \\ candidate"), h("th", { scope: "col" }, "below"), h("th", { scope: "col" }, "at or above"))),
      h("tbody", {},
        h("tr", {}, h("th", { scope: "row" }, "below"), h("td", {}, String(c.recorded_below_candidate_below)), h("td", {}, String(c.recorded_below_candidate_at_or_above))),
        h("tr", {}, h("th", { scope: "row" }, "at or above"), h("td", {}, String(c.recorded_at_or_above_candidate_below)), h("td", {}, String(c.recorded_at_or_above_candidate_at_or_above))))),
    h("p", {}, "Score delta (candidate − recorded): " + Object.entries(r.score_delta.quantiles)
      .map(([k, v]) => `${k} ${v >= 0 ? "+" : ""}${v.toFixed(4)}`).join(", ")),
    deltaChart(r),
    h("table", { "aria-label": "largest disagreements" }, h("thead", {}, h("tr", {},
      ["decision", "claim id", "recorded", "candidate", "delta"].map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, r.largest_disagreements.map((d) => h("tr", {}, h("td", {}, d.decision_id),
        h("td", {}, d.business_key || "-"), h("td", {}, d.recorded.toFixed(4)), h("td", {}, d.candidate.toFixed(4)),
        h("td", {}, d.delta.toFixed(4)))))),
    h("table", { "aria-label": "agreement by tenant" }, h("thead", {}, h("tr", {},
      ["tenant", "rows", "agreement"].map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, r.by_tenant.map((t) => h("tr", {}, h("td", {}, t.tenant || "-"), h("td", {}, String(t.rows)), h("td", {}, pct(t.rate)))))));
  box.focus();
}

// The score deltas' quantiles as bars (a picture of how far the candidate moves scores).
function deltaChart(r) {
  const entries = Object.entries(r.score_delta.quantiles).filter(([, v]) => v !== null);
  const w = 420, hgt = 120, mid = hgt / 2;
  const top = Math.max(...entries.map(([, v]) => Math.abs(v)), 1e-9);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt + 16}`);
  svg.setAttribute("width", w);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "score delta quantiles");
  const bar = w / entries.length;
  entries.forEach(([k, v], i) => {
    const rect = document.createElementNS(ns, "rect");
    const size = (Math.abs(v) / top) * (mid - 4);
    rect.setAttribute("x", (i * bar + 6).toFixed(1));
    rect.setAttribute("width", (bar - 12).toFixed(1));
    rect.setAttribute("y", (v >= 0 ? mid - size : mid).toFixed(1));
    rect.setAttribute("height", Math.max(size, 1).toFixed(1));
    rect.setAttribute("fill", v >= 0 ? "#0b5cad" : "#a1161b");
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", (i * bar + bar / 2).toFixed(1));
    label.setAttribute("y", hgt + 12);
    label.setAttribute("text-anchor", "middle");
    label.setAttribute("font-size", "11");
    label.textContent = k;
    svg.append(rect, label);
  });
  return svg;
}

// -- Reviews ------------------------------------------------------------------------------

async function reviewsPage() {
  const { reviews } = await api("GET", "/admin/reviews?limit=100");
  const detail = h("div", { id: "review-detail", tabindex: "-1" });
  const now = Date.now() / 1000;
  const rows = reviews.map((item) => {
    const left = item.due_ns / 1e9 - now;
    const sla = item.overdue ? "sla-late" : left < 3600 ? "sla-near" : "";
    return h("tr", { class: sla },
      h("td", {}, h("a", { href: "#reviews", onclick: (e) => { e.preventDefault(); openReview(item.id, detail); } }, item.id)),
      h("td", {}, item.business_key || "-"), h("td", {}, `${item.model} v${item.version}`),
      h("td", {}, item.gate), h("td", {}, item.state), h("td", {}, ago(item.queued_ns / 1e9)),
      h("td", { class: item.overdue ? "error" : "" }, item.overdue ? "overdue" : `${span(left)} left`));
  });
  return [h("h2", {}, `Reviews (${reviews.length})`),
          h("table", { "aria-label": "review queue" }, h("thead", {}, h("tr", {},
            ["review", "claim id", "model", "gate", "state", "queued", "SLA"]
              .map((c) => h("th", { scope: "col" }, c)))), h("tbody", {}, rows)), detail];
}

async function openReview(id, box) {
  const item = await api("GET", `/admin/reviews/${encodeURIComponent(id)}`);
  const reason = h("input", { type: "text", id: "review-reason", required: true, maxlength: 1000, size: 40 });
  const act = (path, body) => async (event) => {
    event.preventDefault();
    try {
      await api("POST", `/admin/reviews/${encodeURIComponent(id)}/${path}`, body());
      // Shown fresh before it says so: what one types next goes into the new form.
      await openReview(id, box);
      say(`Review ${id}: ${path} done.`, "ok");
    } catch (err) {
      say(`Review ${id}: ${err.message}`, "error");
    }
  };
  const parts = [h("h2", {}, `Review ${id}`),
                 h("pre", { "aria-label": "the claim and the model's answer" }, JSON.stringify(item, null, 2))];
  if (allows("review:decide")) {
    parts.push(h("form", { "aria-label": "decide" },
      h("div", { class: "row" },
        h("button", { type: "button", onclick: act("claim", () => ({})) }, "Claim"),
        h("label", { for: reason.id }, "reason", reason),
        h("button", { type: "button", onclick: act("decision", () => ({ action: "approve", reason: reason.value })) }, "Approve"),
        h("button", { type: "button", class: "secondary", onclick: act("decision", () => ({ action: "escalate", reason: reason.value })) }, "Escalate"))));
  }
  box.replaceChildren(...parts);
  box.focus();
}

// -- Decisions ----------------------------------------------------------------------------

const SEARCH_FIELDS = [
  ["key", "claim id (business key)"], ["decision_id", "decision id"], ["tenant", "tenant"],
  ["model", "model"], ["version", "version"], ["outcome", "outcome"],
];

function decisionsPage() {
  const inputs = Object.fromEntries(SEARCH_FIELDS.map(([name]) => [name,
    h("input", { type: "text", id: `q-${name}`, name, size: 18 })]));
  const results = h("div", { id: "results" });
  const detail = h("div", { id: "decision-detail", tabindex: "-1" });
  const form = h("form", {
    role: "search", "aria-label": "search decisions",
    onsubmit: async (event) => {
      event.preventDefault();
      const query = new URLSearchParams({ limit: "50" });
      for (const [name, input] of Object.entries(inputs)) if (input.value.trim()) query.set(name, input.value.trim());
      try {
        const found = await api("GET", `/admin/audit/decisions?${query}`);
        results.replaceChildren(...decisionTable(found, detail));
      } catch (err) {
        results.replaceChildren(h("p", { class: "error", role: "alert" }, err.message));
      }
    },
  }, h("div", { class: "row" }, SEARCH_FIELDS.map(([name, label]) => h("label", { for: inputs[name].id }, label, inputs[name])),
       h("button", { type: "submit" }, "Search")));
  return [form, results, detail];
}

function decisionTable(found, detail) {
  const exportButton = h("button", {
    type: "button", class: "secondary",
    onclick: () => {
      const blob = new Blob([JSON.stringify(found.decisions, null, 2)], { type: "application/json" });
      const link = h("a", { href: URL.createObjectURL(blob), download: "decisions.json" });
      link.click();
      URL.revokeObjectURL(link.href);
    },
  }, "Export JSON");
  return [h("p", {}, `${found.total}${found.total_capped ? "+" : ""} decision(s)`, " ", exportButton),
    h("table", { "aria-label": "decisions found" },
      h("thead", {}, h("tr", {}, ["decision", "time", "claim id", "tenant", "model", "route", "outcome"]
        .map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, found.decisions.map((d) => h("tr", {},
        h("td", {}, h("a", { href: "#decisions", onclick: (e) => { e.preventDefault(); openDecision(d.decision_id, detail); } }, d.decision_id)),
        h("td", {}, d.time), h("td", {}, d.business_key || "-"), h("td", {}, d.tenant || "-"),
        h("td", {}, `${d.model} v${d.version}`), h("td", {}, `${d.route.target} (${d.route.reason || "-"})`),
        h("td", { class: d.outcome === "ok" ? "ok" : "error" }, d.outcome)))))];
}

async function openDecision(id, box) {
  const doc = await api("GET", `/admin/audit/decisions/${encodeURIComponent(id)}`);
  const cp = doc.checkpoint || {};
  const chain = cp.covered
    ? `verified: in the signed checkpoint of ${cp.size} records (signature ${cp.signature_check || "not checked"})`
    : "unverifiable yet: written since the last signed checkpoint";
  // Rows of named features (the model repository's feature names and units).
  const features = (doc.inputs || []).flatMap((t) => (t.rows || []).flatMap((row, i) =>
    Object.entries(row).map(([name, cell]) => h("tr", {},
      h("td", {}, t.rows.length > 1 ? `${i + 1}` : ""), h("td", {}, name),
      h("td", {}, "value" in cell ? String(cell.value) : `redacted (${cell.redacted})`),
      h("td", {}, cell.unit || "")))));
  box.replaceChildren(
    h("h2", {}, `Decision ${doc.decision_id}`),
    h("p", { class: cp.covered ? "ok" : "warn" }, `Chain: ${chain}`),
    h("p", {}, `${doc.model} v${doc.version} · ${doc.protocol} · tenant ${doc.tenant || "-"} · ` +
      `route ${doc.route.target}, ${doc.route.reason || "-"} (revision ${doc.route.revision}) · outcome ${doc.outcome}`),
    features.length ? h("table", { "aria-label": "features" },
      h("thead", {}, h("tr", {}, ["row", "feature", "value", "unit"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, features)) : null,
    h("p", {}, `Answer: ${(doc.outputs || []).map((t) => `${t.name} ${JSON.stringify(t.values ?? "redacted")}`).join(", ")}` +
      (doc.review ? ` · sent to review ${doc.review.id} by gate ${doc.review.gate}` : "")),
    h("details", {}, h("summary", {}, "The whole record (JSON)"),
      h("pre", { "aria-label": "the whole record" }, JSON.stringify(doc, null, 2))));
  box.focus();
}

// -- The frame ----------------------------------------------------------------------------

async function show() {
  const id = (location.hash || "#").slice(1);
  if (!me && sessionStorage.getItem(TOKEN_KEY)) {
    try { await signIn(sessionStorage.getItem(TOKEN_KEY)); } catch { /* back to sign-in */ }
  }
  const pages = PAGES.filter((p) => allows(p.scope));
  nav.replaceChildren(...pages.map((p) => h("a", { href: `#${p.id}`, "aria-current": p.id === id ? "page" : false }, p.title)));
  who.replaceChildren(...(me ? [`${me.subject} · tenant ${me.tenant} · ${me.scopes.join(" ")} `,
    h("button", { type: "button", class: "secondary", onclick: signOut }, "Sign out")] : []));
  const page = pages.find((p) => p.id === id);
  if (!me || !page) {
    main.replaceChildren(...(me ? [h("p", {}, pages.length ? "Choose a page above." :
      "This token holds no scope any page needs (routes:read, review:read, audit:read).")] : await loginPage()));
    return;
  }
  main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    main.replaceChildren(...[await page.render()].flat());
  } catch (err) {
    main.replaceChildren(h("p", { class: "error", role: "alert" }, err.message));
  }
}

window.addEventListener("hashchange", show);
fromProvider().then(show);
