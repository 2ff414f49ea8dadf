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
  button.dataset.movieId = movie.movieId;
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
// Only a list's latest load shows: an earlier one that answers late is Superseded (a filter changed
// twice, a field left after a change).
class Superseded extends Error {}

const latestLoad = new Map();  // list id -> the number of its latest load

async function loading(id, work) {
  const list = $(id);
  const load = (latestLoad.get(id) || 0) + 1;
  latestLoad.set(id, load);
  const latest = () => latestLoad.get(id) === load;
  list.setAttribute("aria-busy", "true");
  try {
    const data = await work();
    if (!latest()) throw new Superseded(`a later load of ${id} replaced this one`);
    return data;
  } catch (err) {
    if (latest()) list.replaceChildren();
    throw err;
  } finally {
    if (latest()) list.setAttribute("aria-busy", "false");
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

function chosenGenres() {
  return [...document.querySelectorAll('#genre input[name="genre"]:checked')].map((box) => box.value);
}

function showChosenGenres() {
  const genres = chosenGenres();
  $("genre-picked").textContent = genres.length ? genres.join(", ") : "any";
}

// The years as the API takes them: one year, or a range; an open end is bounded by 1000 or 9999, so a movie
// whose title has no year never passes a year filter.
function yearFilter() {
  const [from, to] = ["year-from", "year-to"].map((id) => $(id).value.trim());
  if ([from, to].some((year) => year && !/^\d{4}$/.test(year))) {
    const message = "A year has four digits, such as 1995.";
    showError(message);
    throw new Error(message);
  }
  if (from && to) return from === to ? from : `${from}-${to}`;
  if (from) return `${from}-9999`;
  return to ? `1000-${to}` : null;
}

function listParams() {
  const params = new URLSearchParams({ min_count: $("min-count").value, explain: "1" });
  const genres = chosenGenres();
  if (genres.length) params.set("genre", genres.join("|"));  // any of them
  if ($("exclude-genre").value) params.set("exclude_genre", $("exclude-genre").value);
  const years = yearFilter();
  if (years) params.set("year", years);
  return params;
}

// "Because you rated Heat (1995) (4.5★), Fargo (1996) (4★)": the user's own ratings that did most for it.
function because(movie) {
  const line = Object.assign(document.createElement("div"), { className: "because" });
  line.textContent = "Because you rated " +
    movie.because.map((reason) => `${reason.title} (${reason.rating}★)`).join(", ");
  return line;
}

async function loadRecommendations(event) {
  if (event) event.preventDefault();
  if (event !== false) showError("");  // false: part of an action that cleared it already
  const count = encodeURIComponent($("count").value);
  const data = await loading("recommendations",
    () => api("GET", `/${encodeURIComponent(user())}/ratings/top/${count}?${listParams()}`));
  $("fallback").hidden = data.fallback !== "popular";
  $("empty-reason").hidden = !data.reason;  // an empty list says why (a filter no movie passes)
  $("empty-reason").textContent = data.reason ? `Nothing to show: ${data.reason}.` : "";
  const list = $("recommendations");
  list.replaceChildren();
  // Which filters the list shows (tests wait on them).
  Object.assign(list.dataset, { minCount: data.min_count, genre: data.genre || "",
    excludeGenre: data.exclude_genre || "", year: data.year || "" });
  for (const movie of data.movies) {
    const item = document.createElement("li");
    item.dataset.movieId = movie.movieId;
    item.dataset.ratingsCount = movie.ratings_count;
    item.dataset.genres = movie.genres.join("|");
    const title = Object.assign(document.createElement("div"), { className: "title" });
    title.append(movieLink(movie),
      meta(`predicted ${movie.predicted_rating.toFixed(2)} ★ · ${plural(movie.ratings_count, "rating")} · ` +
        movie.genres.join(", ")));
    const hide = Object.assign(document.createElement("button"),
      { type: "button", className: "quiet not-interested", textContent: "Not interested" });
    hide.setAttribute("aria-label", `Not interested in ${movie.title}`);
    hide.addEventListener("click", () => notInterested(movie.movieId, hide).catch(() => {}));
    const row = Object.assign(document.createElement("div"), { className: "row" });
    row.append(title, hide);
    if (movie.because && movie.because.length) {
      row.append(because(movie));
      item.dataset.because = movie.because.map((reason) => reason.movieId).join(",");
    }
    item.append(row);
    list.append(item);
  }
  loadStatus().catch(() => {});
}

// Movies the user is not interested in leave every list of theirs; the list under the recommendations shows
// them again one by one.
function renderHidden(data) {
  const list = $("hidden");
  list.replaceChildren();
  for (const movie of data.hidden) {
    const item = document.createElement("li");
    item.dataset.movieId = movie.movieId;
    const again = Object.assign(document.createElement("button"),
      { type: "button", className: "quiet show-again", textContent: "Show again" });
    again.setAttribute("aria-label", `Show ${movie.title} again`);
    again.addEventListener("click", () => showAgain(movie.movieId, again).catch(() => {}));
    item.append(movieLink(movie), again);
    list.append(item);
  }
  $("hidden-count").textContent = data.hidden.length;
  $("hidden-panel").hidden = !data.hidden.length;
}

async function loadHidden() {
  renderHidden(await loading("hidden", () => api("GET", `/${encodeURIComponent(user())}/hidden`)));
}

async function notInterested(movieId, button) {
  showError("");
  button.disabled = true;
  try {
    renderHidden(await api("POST", `/${encodeURIComponent(user())}/hidden`, [movieId]));
  } finally {
    button.disabled = false;
  }
  await loadRecommendations(false);
}

async function showAgain(movieId, button) {
  showError("");
  button.disabled = true;
  try {
    await api("DELETE", `/${encodeURIComponent(user())}/hidden/${movieId}`);
  } finally {
    button.disabled = false;
  }
  await Promise.all([loadHidden(), loadRecommendations(false)]);
}

// "Forget me" asks first, in a dialog of the page's own (Cancel is where the focus starts); forgetting deletes
// the user's ratings and hidden movies, and the lists show what is left: nothing rated, the most-rated movies.
function askToForget() {
  const dialog = $("forget-dialog");
  $("forget-user").textContent = user();
  dialog.returnValue = "";  // Escape closes it without a value: nothing is forgotten
  dialog.showModal();
}

async function forget() {
  showError("");
  $("forgotten").textContent = "";
  const data = await api("DELETE", `/${encodeURIComponent(user())}/ratings`);
  $("forgotten").textContent = `Forgotten: ${plural(data.posted_removed, "posted rating")} deleted, ` +
    `${plural(data.dataset_ratings_excluded, "dataset rating")} excluded.`;
  $("rated").classList.remove("expanded");
  const results = $("results");  // their stars showed the ratings just deleted
  results.replaceChildren();
  delete results.dataset.query;
  await Promise.all([loadRated(), loadRecommendations(false), loadHidden()]);
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
    api("GET", `/movies/${movieId}/similar?count=8&user=${encodeURIComponent(user())}`),  // without her hidden movies
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
  $("forgotten").textContent = "";
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
  for (const id of ["rated", "recommendations", "hidden"]) $(id).replaceChildren();
  for (const id of ["fallback", "empty-reason", "rated-more", "hidden-panel"]) $(id).hidden = true;
  for (const key of ["minCount", "genre", "excludeGenre", "year"]) delete $("recommendations").dataset[key];
}

function refresh() {
  showError("");
  Promise.all([loadRated(), loadRecommendations(false), loadHidden()]).catch((err) => {
    if (!(err instanceof Superseded)) clearLists();  // a later load shows this user's lists
  });
}

function toggleRated() {
  const list = $("rated");
  list.classList.toggle("expanded");
  loadRated().catch(() => {});
}

$("search-form").addEventListener("submit", (e) => search(e).catch(() => {}));
$("filters").addEventListener("submit", (e) => loadRecommendations(e).catch(() => {}));
$("min-count").addEventListener("change", () => loadRecommendations().catch(() => {}));
$("genre").addEventListener("change", () => { showChosenGenres(); loadRecommendations().catch(() => {}); });
$("genre").addEventListener("keydown", (e) => {  // Escape closes the genre panel, back on its summary
  if (e.key !== "Escape" || !$("genre").open) return;
  $("genre").open = false;
  $("genre").querySelector("summary").focus();
});
document.addEventListener("click", (e) => {  // so does a click anywhere else, like a dropdown's
  if ($("genre").open && !$("genre").contains(e.target)) $("genre").open = false;
});
for (const id of ["exclude-genre", "year-from", "year-to"]) {
  $(id).addEventListener("change", () => loadRecommendations().catch(() => {}));
}
$("user").addEventListener("change", () => chooseUser(user()));
$("new-user").addEventListener("click", () => newUser().catch(() => {}));
$("rated-more").addEventListener("click", toggleRated);
$("detail-close").addEventListener("click", () => $("detail").close());
$("forget").addEventListener("click", askToForget);
$("forget-dialog").addEventListener("close", () => {
  if ($("forget-dialog").returnValue === "forget") forget().catch(() => {});
});
const remembered = localStorage.getItem(USER_KEY);
if (remembered) chooseUser(remembered);  // otherwise the start screen asks who you are
