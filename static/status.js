// The operators' status page: draws /status.json. With an admin token set, it asks for it once per tab
// (kept apart from the people's page's token).
"use strict";

const api = makeApi("recommender-admin-token", "This status page needs the service's admin token:");
const fmt = (x, digits = 4) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

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

function render(data) {
  const s = data.serving;
  const fit = s.trainer.last_fit;
  const waiting = s.store_error ? `the ratings store is not answering (${s.store_error})`
    : `${s.pending_ratings} posted since wait for the next fit`;
  $("serving").textContent = `Version ${s.model_version}, trained ${s.trained_at} on ${s.n_ratings} ratings; ` +
    `${waiting}; trainer ${s.trainer.state}` +
    (fit ? `, last fit ${fit.seconds} s (version ${fit.version})` : "") + ".";
  $("store").textContent = `Ratings store (${data.store.kind}, ${data.store.where}): ` +
    `${(data.store.bytes / 1e6).toFixed(2)} MB, last request ${data.store.last_request}.`;
  const body = $("versions").querySelector("tbody");
  body.replaceChildren();
  for (const v of data.versions) {
    const row = document.createElement("tr");
    if (v.serving) row.className = "serving";
    const f = v.fit_seconds || {};
    const live = v.live || {};
    for (const cell of [`${v.version}${v.serving ? " (serving)" : ""}`, v.created_at, v.n_ratings,
      [f.rating, f.ranking, f.neighbours, f.total].map((x) => fmt(x, 1)).join(" / "),
      fmt(live.rmse), fmt(live.mae), fmt(live.hit_rate, 3), live.ratings ?? 0]) {
      const td = document.createElement("td");
      td.textContent = cell ?? "–";
      row.append(td);
    }
    body.append(row);
  }
  const t = data.validation;
  $("validation").textContent = t
    ? `Served blend ${fmt(t.served_valid_rmse)} out of sample (defaults ${fmt(t.default_valid_rmse)}) on ` +
      `${t.n_valid} validation ratings; ${t.fits} fits in ${t.seconds} s` + (t.time_cap_hit ? " (time cap hit)" : "") + "."
    : "No tuning report: the parameters came from params.json or the defaults.";
  chart(data.versions);
}

api("GET", "/status.json").then(render).catch(() => {});  // api() shows what went wrong
