// The operators' status page: draws /status.json. With an admin token set, it asks for it once per tab
// (kept apart from the people's page's token).
"use strict";

const api = makeApi("recommender-admin-token", "This status page needs the service's admin token:");
const fmt = (x, digits = 4) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const signed = (x, digits = 4) => (x === null || x === undefined ? "–" : (x > 0 ? "+" : "") + fmt(x, digits));
// A figure and its 95% interval, "0.8812 [0.8601, 0.9023]" (only the figure when there is no interval).
const withInterval = (x, interval, digits = 4, show = fmt) =>
  (x === null || x === undefined || !interval ? show(x, digits)
    : `${show(x, digits)} [${show(interval[0], digits)}, ${show(interval[1], digits)}]`);

// An element with a text (never markup: names come from operators) and optionally a class.
function make(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function chart(versions) {
  const svg = $("live-chart");
  svg.replaceChildren();
  const rows = versions.filter((v) => v.live && v.live.rmse !== null).reverse();  // oldest first
  const ns = "http://www.w3.org/2000/svg";
  const add = (name, attrs, text) => {
    const node = document.createElementNS(ns, name);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  if (!rows.length) {
    add("text", { x: 8, y: 24 }, "no posted ratings yet");
    return;
  }
  const top = Math.max(...rows.map((v) => v.live.rmse)) * 1.15;
  const width = 100 / rows.length;
  rows.forEach((v, i) => {
    const height = (v.live.rmse / top) * 120;
    add("rect", { x: `${i * width + width * 0.15}%`, y: 140 - height, width: `${width * 0.7}%`, height,
                  class: v.serving ? "bar serving" : "bar", "data-version": v.version });
    add("text", { x: `${i * width + width * 0.5}%`, y: 134 - height, "text-anchor": "middle" }, fmt(v.live.rmse, 3));
    add("text", { x: `${i * width + width * 0.5}%`, y: 156, "text-anchor": "middle" }, `v${v.version}`);
  });
}

// Why the versions that serve do: an experiment's arms (each user is in one), else the pinned version or the
// newest, which also answers requests for no user in particular while an experiment runs.
function servingWhy(sv) {
  const base = sv.reason === "pinned"
    ? `version ${sv.version}, pinned` + (sv.newest === sv.version ? " (also the newest)"
      : ` (the newest is version ${sv.newest})`)
    : `version ${sv.version}, the newest`;
  const e = sv.experiment;
  if (!e) return `Serving ${base}, to everyone.`;
  const arms = Object.keys(e.arms).sort()
    .map((arm) => `arm ${arm}: version ${e.arms[arm]} to ${e.traffic[arm]}% of users`);
  return `Serving experiment ${e.name} (${arms.join("; ")}); answers for no user in particular from ${base}.`;
}

function servingText(s) {
  const sv = s.serving;
  const fit = s.trainer.last_fit;
  const waiting = s.store_error ? `the ratings store is not answering (${s.store_error})`
    : `${s.pending_ratings} posted since wait for the next fit`;
  const errors = Object.entries(sv.load_errors || {}).map(([version, error]) => `version ${version} (${error})`);
  return `${servingWhy(sv)} Version ${s.model_version}, trained ${s.trained_at} on ${s.n_ratings} ratings; ` +
    `${waiting}; trainer ${s.trainer.state}` +
    (fit ? `, last fit ${fit.seconds} s (version ${fit.version})` : "") + ". " +
    `This process has loaded version${sv.loaded.length === 1 ? "" : "s"} ${sv.loaded.join(", ")}` +
    (errors.length ? `; it could not load ${errors.join(", ")}` : "") + ".";
}

// A version's roles, as [kind, text]: newest, pinned, candidate, each experiment arm it serves, loaded here.
function roles(v, sv) {
  const out = [];
  if (v.newest) out.push(["newest", "newest"]);
  if (v.pinned) out.push(["pinned", "pinned"]);
  if (v.candidate) out.push(["candidate", "candidate"]);
  const e = sv.experiment;
  // Every arm from the serving block (two arms may share a version); the row's own field otherwise.
  const arms = e ? Object.keys(e.arms).sort().filter((arm) => e.arms[arm] === v.version).map((arm) => [e.name, arm])
    : v.experiment ? v.experiment.arms.map((arm) => [v.experiment.name, arm]) : [];
  for (const [name, arm] of arms) out.push(["arm", `${name}: arm ${arm}`]);
  if (v.serving) out.push(["loaded", "loaded here"]);
  return out;
}

function versionsTable(versions, sv) {
  const body = $("versions").querySelector("tbody");
  body.replaceChildren();
  for (const v of versions) {
    const row = document.createElement("tr");
    row.dataset.version = v.version;
    if (v.serving) row.className = "serving";
    const f = v.fit_seconds || {};
    const live = v.live || {};
    const role = make("td", undefined, "roles");
    for (const [kind, text] of roles(v, sv)) role.append(make("span", text, `role ${kind}`), " ");
    row.append(make("td", v.version), role);
    for (const cell of [v.created_at, v.n_ratings,
      [f.rating, f.ranking, f.neighbours, f.total].map((x) => fmt(x, 1)).join(" / "),
      fmt(live.rmse), fmt(live.mae), fmt(live.hit_rate, 3), live.ratings ?? 0]) {
      row.append(make("td", cell ?? "–"));
    }
    body.append(row);
  }
}

function outcomeText(e) {
  const o = e.outcome;
  if (!o) return "no outcome recorded";
  if (o.promoted === null || o.promoted === undefined) return "nothing promoted: the pin stayed as it was";
  if (o.promoted === "newest") return "promoted: the newest version (no pin)";
  return `promoted arm ${o.promoted}: version ${o.pinned} pinned, its parameters the dataset's`;
}

// One experiment: what it is, then its arms side by side (the control first), one column per arm.
function experimentBlock(e) {
  const block = make("article", undefined, e.running ? "experiment running" : "experiment");
  block.dataset.name = e.name;
  block.append(make("h3", e.running ? `${e.name} (running)` : e.name));
  block.append(make("p", e.running ? `Running since ${e.started_at}; control arm ${e.control}.`
    : `Stopped ${e.stopped_at} (started ${e.started_at}); ${outcomeText(e)}.`, "when"));
  const arms = [e.control, ...Object.keys(e.arms).filter((arm) => arm !== e.control).sort()];
  const vsControl = (figure, digits) => (a, arm) => {
    const d = (e.difference || {})[arm];
    return arm === e.control ? "(control)" : d ? withInterval(d[figure], d[`${figure}_interval`], digits, signed) : "–";
  };
  const figures = [
    ["version", "version", (a) => a.version],
    ["traffic", "traffic", (a, arm) => `${e.traffic[arm]}%`],
    ["users", "users", (a) => a.users],
    ["lists", "lists shown", (a) => a.lists],
    ["posted", "ratings posted", (a) => a.posted],
    ["rmse", "RMSE", (a) => withInterval(a.rmse, a.rmse_interval)],
    ["mae", "MAE", (a) => withInterval(a.mae, a.mae_interval)],
    ["hit_rate", "hit rate", (a) => withInterval(a.hit_rate, a.hit_rate_interval, 3) +
      (a.liked ? ` (${a.hits} of ${a.liked})` : "")],
    ["rmse_difference", "RMSE − control", vsControl("rmse", 4)],
    ["mae_difference", "MAE − control", vsControl("mae", 4)],
    ["hit_rate_difference", "hit rate − control", vsControl("hit_rate", 3)],
  ];
  const table = make("table", undefined, "arms");
  const head = document.createElement("tr");
  head.append(make("th", "arm"));
  for (const arm of arms) {
    const th = make("th", arm === e.control ? `${arm} (control)` : arm);
    th.scope = "col";
    th.dataset.arm = arm;
    head.append(th);
  }
  table.append(make("thead"));
  table.tHead.append(head);
  const body = make("tbody");
  for (const [key, label, show] of figures) {
    const row = document.createElement("tr");
    row.dataset.figure = key;
    const th = make("th", label);
    th.scope = "row";
    row.append(th);
    for (const arm of arms) row.append(make("td", show(e.arms[arm] || {}, arm) ?? "–"));
    body.append(row);
  }
  table.append(body);
  const scroll = make("div", undefined, "scroll");  // ten arms may be wider than the screen
  scroll.append(table);
  block.append(scroll);
  return block;
}

function experimentsSection(list) {
  const box = $("experiments");
  box.replaceChildren();
  if (list === null || list === undefined) {
    box.append(make("p", "The ratings store did not answer: the experiments are not known."));
  } else if (!list.length) {
    box.append(make("p", "No experiment yet (POST /admin/experiments starts one)."));
  } else {
    for (const e of list) box.append(experimentBlock(e));
  }
}

function render(data) {
  const s = data.serving;
  $("serving").textContent = servingText(s);
  $("store").textContent = `Ratings store (${data.store.kind}, ${data.store.where}): ` +
    `${(data.store.bytes / 1e6).toFixed(2)} MB, last request ${data.store.last_request}.`;
  versionsTable(data.versions, s.serving);
  const t = data.validation;
  $("validation").textContent = t
    ? `Served blend ${fmt(t.served_valid_rmse)} out of sample (defaults ${fmt(t.default_valid_rmse)}) on ` +
      `${t.n_valid} validation ratings; ${t.fits} fits in ${t.seconds} s` + (t.time_cap_hit ? " (time cap hit)" : "") + "."
    : "No tuning report: the parameters came from params.json or the defaults.";
  experimentsSection(data.experiments);
  chart(data.versions);
}

api("GET", "/status.json").then(render).catch(() => {});  // api() shows what went wrong
