// The page talks only to the JSON API; every error the API returns is shown to the person.
"use strict";

const api = makeApi("recommender-user-token",
  "This service needs your user token (from its operator) to show and save your ratings:");
const scale = {
  low: Number(document.body.dataset.low),
  high: Number(document.body.dataset.high),
  step: Number(document.body.dataset.step),
};

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function user() {
  return $("user").value.trim();
}

function ratingOptions() {
  const values = [];  // lowest first, as the stars read left to right
  for (let v = scale.low; v <= scale.high + 1e-9; v += scale.step) values.push(Math.round(v * 10) / 10);
  return values;
}

// A row of star buttons: each button is one step of the scale (half a star on a half-star scale), so a
// click on the left half of the fourth star rates 3.5.  One button of the row is in the tab order; the
// arrow keys move along the row (the stars light up to show the rating), Enter or Space rates.
function starPicker(movie, onRate) {
  const row = document.createElement("div");
  row.className = "stars";
  row.setAttribute("role", "group");
  row.setAttribute("aria-label", `Your rating for ${movie.title}`);
  const values = ratingOptions();
  const buttons = values.map((value) => {
    const start = value - scale.step;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "star";
    button.dataset.value = value;
    button.tabIndex = -1;
    button.setAttribute("aria-label", `rate ${value} star${value === 1 ? "" : "s"}`);
    button.style.setProperty("--part", scale.step);  // how much of a star this button draws
    button.style.setProperty("--offset", start - Math.floor(start + 1e-9));  // which part of it
    button.append(Object.assign(document.createElement("span"), { className: "glyph", textContent: "★" }));
    if (Math.abs(start - Math.round(start)) < 1e-9) button.classList.add("whole-start");
    button.addEventListener("click", () => onRate(value));
    button.addEventListener("mouseenter", () => light(value));
    button.addEventListener("focus", () => { light(value); roving(button); });
    return button;
  });
  function light(value) {
    for (const b of buttons) b.classList.toggle("on", Number(b.dataset.value) <= value + 1e-9);
  }
  function roving(current) {
    for (const b of buttons) b.tabIndex = b === current ? 0 : -1;
  }
  function chosen() {
    return Number(row.dataset.rating || 0);
  }
  row.addEventListener("mouseleave", () => light(chosen()));
  row.addEventListener("focusout", (e) => { if (!row.contains(e.relatedTarget)) light(chosen()); });
  row.addEventListener("keydown", (e) => {
    const at = buttons.indexOf(document.activeElement);
    const moves = { ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1 };
    let next = null;
    if (e.key in moves) next = Math.min(buttons.length - 1, Math.max(0, at + moves[e.key]));
    if (e.key === "Home") next = 0;
    if (e.key === "End") next = buttons.length - 1;
    if (next === null || at < 0) return;
    e.preventDefault();
    buttons[next].focus();
  });
  row.show = (value) => {  // the rating saved for this movie
    row.dataset.rating = value;
    for (const b of buttons) b.setAttribute("aria-pressed", String(Number(b.dataset.value) === value));
    light(value);
  };
  const initial = buttons.find((b) => Number(b.dataset.value) === 4) || buttons[buttons.length - 1];
  initial.tabIndex = 0;  // the row's way in from the keyboard: a good rating, one arrow from the others
  row.append(...buttons);
  return row;
}

function movieLink(movie) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "movie-link";
  button.textContent = movie.title;
  button.addEventListener("click", () => showMovie(movie.movieId).catch(() => {}));
  return button;
}

function meta(text) {
  const span = document.createElement("span");
  span.className = "meta";
  span.textContent = ` ${text}`;
  return span;
}

function renderResults(query, movies) {
  const list = $("results");
  list.replaceChildren();
  list.dataset.query = query;
  if (!movies.length) {
    list.append(Object.assign(document.createElement("li"), { textContent: "No movie matches." }));
  }
  for (const movie of movies) {
    const item = document.createElement("li");
    item.dataset.movieId = movie.movieId;
    const stars = starPicker(movie, (rating) => rateMovie(movie.movieId, rating, item).catch(() => {}));
    const title = Object.assign(document.createElement("div"), { className: "title" });
    title.append(movieLink(movie), meta(`(${plural(movie.ratings_count, "rating")})`));
    const saved = Object.assign(document.createElement("span"), { className: "saved", role: "status" });
    item.append(title, stars, saved);
    if (ownRatings.has(movie.movieId)) stars.show(ownRatings.get(movie.movieId));
    list.append(item);
  }
}

// While a list loads it says so (aria-busy: dimmed, and "Loading…" when it is empty); a list that
// failed to load is emptied, so what stays on screen never belongs to another user, filter or search.
async function loading(id, work) {
  const list = $(id);
  list.setAttribute("aria-busy", "true");
  try {
    return await work();
  } catch (err) {
    list.replaceChildren();
    throw err;
  } finally {
    list.setAttribute("aria-busy", "false");
  }
}

async function search(event) {
  if (event) event.preventDefault();
  showError("");
  const q = $("search").value.trim();
  if (!q) return;
  await loading("results", async () => {
    const data = await api("GET", `/movies?q=${encodeURIComponent(q)}&limit=20`);
    renderResults(q, data.movies);
  });
}

async function rateMovie(movieId, rating, item) {
  showError("");
  await api("POST", `/${encodeURIComponent(user())}/ratings`, [{ movieId, rating }]);
  const mark = item.querySelector(".saved");
  mark.textContent = `saved ${rating} ★`;
  mark.dataset.saved = rating;
  item.querySelector(".stars").show(rating);
  await Promise.all([loadRated(), loadRecommendations(false)]);
}

const RATED_SHOWN = 5;  // the user's own ratings collapse to this many, with "show all"

const ownRatings = new Map();  // movie id -> this user's rating, so search results show it on their stars

async function loadRated() {
  const data = await loading("rated", () => api("GET", `/${encodeURIComponent(user())}/ratings`));
  ownRatings.clear();
  for (const movie of data.ratings) ownRatings.set(movie.movieId, movie.rating);
  const list = $("rated");
  list.replaceChildren();
  data.ratings.forEach((movie, i) => {
    const item = document.createElement("li");
    item.dataset.movieId = movie.movieId;
    item.hidden = i >= RATED_SHOWN && !list.classList.contains("expanded");
    item.append(movieLink(movie), meta(`${movie.rating} ★`));
    list.append(item);
  });
  const more = $("rated-more");
  more.hidden = data.ratings.length <= RATED_SHOWN;
  more.textContent = list.classList.contains("expanded") ? "show fewer" : `show all ${data.ratings.length}`;
}

async function loadRecommendations(event) {
  if (event) event.preventDefault();
  if (event !== false) showError("");  // false: part of an action that cleared it already
  const params = new URLSearchParams({ min_count: $("min-count").value });
  if ($("genre").value) params.set("genre", $("genre").value);
  const count = encodeURIComponent($("count").value);
  const data = await loading("recommendations",
    () => api("GET", `/${encodeURIComponent(user())}/ratings/top/${count}?${params}`));
  $("fallback").hidden = data.fallback !== "popular";
  $("empty-reason").hidden = !data.reason;  // an empty list says why (a filter no movie passes)
  $("empty-reason").textContent = data.reason ? `Nothing to show: ${data.reason}.` : "";
  const list = $("recommendations");
  list.replaceChildren();
  list.dataset.minCount = data.min_count;  // which filter the list shows (tests wait on it)
  for (const movie of data.movies) {
    const item = document.createElement("li");
    item.dataset.movieId = movie.movieId;
    item.dataset.ratingsCount = movie.ratings_count;
    item.append(movieLink(movie),
      meta(`predicted ${movie.predicted_rating.toFixed(2)} ★ · ${plural(movie.ratings_count, "rating")} · ` +
        movie.genres.join(", ")));
    list.append(item);
  }
  loadStatus().catch(() => {});
}

async function loadStatus() {
  const health = await api("GET", "/health");
  const when = health.trained_at.replace("T", " ").replace("Z", " UTC");
  const waiting = health.store_error ? "ratings cannot be saved right now (the store is not answering)"
    : health.pending_ratings ? `${plural(health.pending_ratings, "new rating")} wait for the next retrain`
    : "every rating is in the model";
  $("status").textContent =
    `Model version ${health.model_version}, trained ${when}; ${waiting}` +
    (health.training ? " (retraining now)" : "") + ".";
}

async function showMovie(movieId) {
  showError("");
  const [prediction, similar] = await Promise.all([
    api("GET", `/${encodeURIComponent(user())}/ratings/${movieId}`),
    api("GET", `/movies/${movieId}/similar?count=8`),
  ]);
  const detail = $("detail");
  if (!detail.open) detail.showModal();  // in the middle of the screen, wherever the list was clicked
  $("detail-title").textContent = prediction.title;
  const own = prediction.user_rating === null ? "not rated by you" : `you rated it ${prediction.user_rating} ★`;
  $("detail-info").textContent =
    `Predicted for you: ${prediction.predicted_rating.toFixed(2)} ★ · ${plural(prediction.ratings_count, "rating")} · ` +
    `${prediction.genres.join(", ")} · ${own}`;
  const list = $("similar");
  list.replaceChildren();
  for (const movie of similar.similar) {
    const item = document.createElement("li");
    item.append(movieLink(movie), meta(`similarity ${movie.similarity.toFixed(2)}`));
    list.append(item);
  }
}

const USER_KEY = "recommender-user";  // who this browser is, remembered across visits

function chooseUser(id) {
  clearLists();  // the previous user's lists go at once, not when this user's arrive
  $("results").replaceChildren();
  ownRatings.clear();
  $("user").value = id;
  if (/^\d+$/.test(String(id))) localStorage.setItem(USER_KEY, id);
  $("start").hidden = true;
  document.querySelector("main").hidden = false;
  refresh();
}

async function newUser() {
  const data = await api("POST", "/users");  // the next id nobody has
  chooseUser(data.user);
}

function clearLists() {
  // A user whose lists cannot be loaded (a bad id, a token for someone else) shows nobody's lists.
  for (const id of ["rated", "recommendations"]) $(id).replaceChildren();
  for (const id of ["fallback", "empty-reason", "rated-more"]) $(id).hidden = true;
  delete $("recommendations").dataset.minCount;
}

function refresh() {
  showError("");
  Promise.all([loadRated(), loadRecommendations(false)]).catch(clearLists);
}

function toggleRated() {
  const list = $("rated");
  list.classList.toggle("expanded");
  loadRated().catch(() => {});
}

$("search-form").addEventListener("submit", (e) => search(e).catch(() => {}));
$("filters").addEventListener("submit", (e) => loadRecommendations(e).catch(() => {}));
$("min-count").addEventListener("change", () => loadRecommendations().catch(() => {}));
$("genre").addEventListener("change", () => loadRecommendations().catch(() => {}));
$("user").addEventListener("change", () => chooseUser(user()));
$("new-user").addEventListener("click", () => newUser().catch(() => {}));
$("rated-more").addEventListener("click", toggleRated);
$("detail-close").addEventListener("click", () => $("detail").close());
const remembered = localStorage.getItem(USER_KEY);
if (remembered) chooseUser(remembered);  // otherwise the start screen asks who you are
